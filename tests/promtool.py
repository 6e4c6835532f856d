"""Finding ``promtool`` (Debian's ``prometheus`` package; ``scripts/setup.sh`` installs it).

Tests that check the Prometheus rules and the dashboard's PromQL need it. Under ``CI=true``
a missing ``promtool`` fails them (CI must not pass by skipping); elsewhere they are
skipped with the reason.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_promtool() -> str:
    """The path of ``promtool``; fails the test under ``CI=true`` when it is missing, else skips it."""
    path = shutil.which("promtool")
    if path is not None:
        return path
    message = "promtool is not installed (apt-get install prometheus; scripts/setup.sh does it)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + " (CI=true: these tests must not skip)")
    pytest.skip(message)
