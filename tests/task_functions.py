"""Functions that the ``task`` step tests run in Ray workers (``tests.task_functions:<name>``).

The tests allow this module with ``task_modules=("tests.task_functions",)``; Ray workers
import it from the repository root, which Ray puts on their ``sys.path``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def assigned_resources() -> dict[str, float]:
    """The Ray resources assigned to the task that runs this (``{"CPU": 2.0, "memory": ...}``)."""
    import ray

    return {name: float(amount) for name, amount in ray.get_runtime_context().get_assigned_resources().items()}


def always_fails(item: str) -> None:
    """Raise ``ValueError`` naming ``item``, on every call."""
    raise ValueError(f"cannot score item {item!r}")


def sleep_and_mark(marker: str, seconds: float) -> str:
    """Write this worker's pid to ``marker``, sleep ``seconds``, then write ``done``."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker + ".done").write_text("done")
    return "slept"


def returns_a_set() -> Any:
    """A value that is not JSON."""
    return {1, 2}
