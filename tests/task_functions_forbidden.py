"""A module the ``task`` step tests never allow: importing it leaves a marker file behind.

Its top level runs on import, so a marker proves that a worker imported it; the worker's
allowlist check must refuse the module before that happens.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MARKER = Path(tempfile.gettempdir()) / "cortx-task-forbidden-module-imported"

MARKER.write_text(str(os.getpid()))


def run() -> str:
    """What a refused step would have called."""
    return "ran"
