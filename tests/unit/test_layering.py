"""Imports go one way (dsl <- persistence <- actors <- serve_app); public surfaces are pinned."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(import_line: str) -> set[str]:
    code = f"import sys\n{import_line}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_dsl_imports_neither_ray_nor_a_database() -> None:
    loaded = _loaded_after("import dsl, dsl.validation, dsl.expressions, dsl.templates, dsl.state")
    assert not {m for m in loaded if m.split(".")[0] in {"ray", "sqlalchemy", "asyncpg", "aiosqlite", "httpx"}}
    assert not {m for m in loaded if m.split(".")[0] in {"actors", "persistence", "serve_app"}}


def test_persistence_does_not_import_the_engine_or_ray() -> None:
    loaded = _loaded_after("import persistence")
    assert not {m for m in loaded if m.split(".")[0] in {"ray", "actors", "serve_app"}}


def test_importing_actors_does_not_start_or_need_ray() -> None:
    loaded = _loaded_after("import actors")
    assert "ray" not in {m.split(".")[0] for m in loaded}


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ("dsl", {"WorkflowPack", "load_pack", "validate_document", "validate_inputs", "parse_expression",
                 "compile_template", "PackValidationError", "ExecutionStatus", "transition"}),
        ("actors", {"WorkflowClient", "Settings", "ServiceRegistry", "Scheduler", "read_record"}),
        ("persistence", {"open_store", "Store", "ExecutionRecord", "StepCheckpoint", "MemoryStore", "SqlStore"}),
    ],
)
def test_public_surface(package: str, expected: set[str]) -> None:
    module = __import__(package)
    exported = set(module.__all__)
    assert expected <= exported, expected - exported
    for name in exported:
        assert hasattr(module, name), name
