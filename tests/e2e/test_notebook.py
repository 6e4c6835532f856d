"""The quick-start notebook runs top to bottom in a fresh kernel, as a user runs it.

Every cell must succeed (nbclient raises on the first failing cell). Beyond that, the
test checks what the notebook is for: the run completed, the step timeline cell drew a
picture (an ``image/png`` output), a run was cancelled, and the run whose ExecutionHost
was killed resumed and completed without running its completed steps again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "quickstart.ipynb"


def _text(cell: Any) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []))


def _tagged(cells: list[Any], tag: str) -> Any:
    [cell] = [c for c in cells if tag in c.get("metadata", {}).get("tags", [])]
    return cell


@pytest.mark.timeout(300)
def test_quickstart_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'notebook.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = "".join(_text(cell) for cell in code)
    assert '"status": "completed"' in outputs
    assert "check-items[2]/validate-item" in outputs
    assert "flowchart TD" in outputs  # the pack drawn as Mermaid text
    assert re.search(r"step\.retrying\s+income-check", outputs)  # the injected failure was retried

    timeline = _tagged(code, "timeline")
    images = [out for out in timeline.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, "the timeline cell drew no picture"
    assert len(images[0]["data"]["image/png"]) > 1000  # base64 of a real PNG, not an empty figure

    assert "cancelled - cancelled by request" in outputs

    resume = _text(_tagged(code, "resume"))
    assert "killing ExecutionHost" in resume
    assert "completed steps re-run: False" in resume
    assert "RESUMED RUN: completed" in resume
