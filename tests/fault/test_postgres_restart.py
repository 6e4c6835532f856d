"""Real fault: PostgreSQL is restarted while runs are in flight.

Checkpoint writes that fail while the server is down are retried; runs wait rather than
fail, and no step is called twice (the database going away never re-runs a step).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry

EXAMPLES = Path(__file__).parents[2] / "examples"


def _restart_postgres() -> None:
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if tool is None or not versions:
        message = "pg_ctlcluster is not available to restart PostgreSQL"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + " (CI=true)")
        pytest.skip(message)
    subprocess.run(
        [tool, "--skip-systemctl-redirect", versions[-1], "main", "restart"], check=True, timeout=120,
        capture_output=True,
    )


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_runs_survive_a_postgres_restart(postgres_url: str, demo_services: Any, make_client: Any) -> None:
    from serve_app.demo_services import Fault

    client = make_client(postgres_url, demo_registry(demo_services.url))
    inputs = json.loads((EXAMPLES / "loan-approval.inputs.json").read_text())
    # Each compliance call takes 3 s: the restart happens while every run waits on it and
    # its checkpoint is written after the server went down.
    demo_services.set_faults([Fault(path="/compliance/v1/check", delay_ms=3000)])
    try:
        runs = [client.start(EXAMPLES / "loan-approval.yaml", inputs) for _ in range(4)]
        deadline = time.monotonic() + 60
        keys = lambda: demo_services.calls()["by_idempotency_key"]  # noqa: E731
        while time.monotonic() < deadline and not all(f"{r}/compliance-check" in keys() for r in runs):
            time.sleep(0.05)
        _restart_postgres()
        records = [client.wait(execution_id, timeout_s=180) for execution_id in runs]
    finally:
        demo_services.set_faults([])
    assert [r["status"] for r in records] == ["completed"] * len(runs), [r.get("error") for r in records]
    calls = demo_services.calls()["by_idempotency_key"]
    for execution_id, record in zip(runs, records):
        mine = {k: v for k, v in calls.items() if k.startswith(execution_id)}
        assert mine and all(v == 1 for v in mine.values()), mine
        # 8 of the pack's steps (the loop's 3 iterations are in the step history only)
        assert len(record["completed_steps"]) == len(set(record["completed_steps"])) == 8
