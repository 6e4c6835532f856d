"""``python examples/driver_script.py`` as a user runs it: a new process, its own local Ray.

The demo services run on a free port (with the income check failing once, as
``scripts/demo.sh`` arms them) and the example registry is pointed at them with
``CORTX_SERVICE_<NAME>_URL``, the overrides a user would set. The run is then read back from
the script's database, so what the script printed is what was stored.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "examples" / "driver_script.py"


@pytest.fixture
def demo_with_a_failing_income_check() -> Iterator[Any]:
    from serve_app.demo_services import Fault, start_in_thread

    with start_in_thread(faults=[Fault("/validation/v1/income", fail_first=1)]) as demo:
        yield demo


@pytest.mark.timeout(300)
def test_driver_script_runs_the_example_and_prints_its_step_history(
    demo_with_a_failing_income_check: Any, tmp_path: Path
) -> None:
    demo = demo_with_a_failing_income_check
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'script.db'}"
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("RAY_ADDRESS", None)
    env.pop("CORTX_SERVICE_REGISTRY", None)
    for name in ("validation", "compliance", "ledger"):
        env[f"CORTX_SERVICE_{name.upper()}_URL"] = f"{demo.url}/{name}"

    run = subprocess.run([sys.executable, str(SCRIPT.relative_to(ROOT))], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "pack loan-approval 1.0.0 deployed" in out
    execution_id = re.search(r"execution (\S+) started", out).group(1)  # type: ignore[union-attr]
    assert f"execution {execution_id}: completed" in out
    # The step history: the income check failed once (503) and was retried.
    assert re.search(r"income-check\s+1\s+failed\s+\d+\s+http_status: HTTP 503", out), out
    assert re.search(r"income-check\s+2\s+completed", out), out
    assert re.search(r"check-items\[2\]/validate-item\s+1\s+completed", out), out
    assert re.search(r"step\.retrying\s+income-check", out), out

    from persistence.store import open_store

    async def stored() -> tuple[Any, Any]:
        store = await open_store(database_url, migrate=False)
        try:
            return await store.get_execution(execution_id), await store.list_pack_versions("loan-approval")
        finally:
            await store.close()

    record, packs = asyncio.run(stored())
    assert record.status == "completed" and record.workflow_pack_id == "loan-approval"
    assert [p.version for p in packs] == ["1.0.0"]
    assert demo.calls()["by_path"]["POST /validation/v1/income"] == 2
