"""Run the loan-approval example from a plain Python script and print its step history.

    python examples/driver_script.py

What it does, with :class:`actors.WorkflowClient` (``docs/driver.md``):

1. deploys ``examples/loan-approval.yaml`` to the pack store (the table ``POST /v1/packs``
   writes; deploying the same document again changes nothing);
2. starts a run of the deployed pack by id and version, with
   ``examples/loan-approval.inputs.json``;
3. prints the run's events as they happen, then waits for it to end;
4. prints the step history (one line per step attempt, as ``GET .../steps`` answers it)
   and the run's outputs.

It needs the demo upstream services (``cortx-workflow demo-services --port 8700``, as
``scripts/demo.sh`` starts them). Environment (all optional): ``DATABASE_URL`` (default
``./cortx-workflow.db``, the one the CLI and ``scripts/demo.sh`` use), ``RAY_ADDRESS``
(default: a new local Ray), ``CORTX_SERVICE_REGISTRY`` (default ``examples/services.yaml``)
and ``CORTX_SERVICE_<NAME>_URL`` to point a service elsewhere. Exit code 0 when the run
completed, 3 when it failed or was cancelled.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing the project

from actors import WorkflowClient  # noqa: E402


def print_history(history: dict[str, Any]) -> None:
    """One line per step attempt: key, attempt, status, duration (ms) and the error, if any."""
    print(f"\nstep history of {history['execution_id']} ({history['status']}):")
    print(f"  {'step':34} {'attempt':>7}  {'status':10} {'ms':>6}  error")
    for step in history["steps"]:
        error = step["error"] or {}
        reason = f"{error.get('kind')}: {error.get('message')}" if error else ""
        duration = "" if step["duration_ms"] is None else step["duration_ms"]
        print(f"  {step['step_key']:34} {step['attempt']:>7}  {step['status']:10} {duration:>6}  {reason}")


def main() -> int:
    """Deploy, run, watch and report the loan-approval example; return the exit code."""
    registry = os.environ.get("CORTX_SERVICE_REGISTRY") or HERE / "services.yaml"
    client = WorkflowClient.from_env(registry_path=registry)

    deployed = client.deploy(HERE / "loan-approval.yaml")
    state = "deployed" if deployed["created"] else "already deployed"
    print(f"pack {deployed['id']} {deployed['version']} {state} ({deployed['steps']} steps)")

    inputs = json.loads((HERE / "loan-approval.inputs.json").read_text())
    execution_id = client.start(workflow_pack_id=deployed["id"], version=deployed["version"], inputs=inputs)
    print(f"execution {execution_id} started")
    for event in client.watch(execution_id):
        if event["type"].startswith("step."):
            print(f"  {event['type']:16} {event.get('step_key', '')} (attempt {event.get('attempt', '-')})")

    record = client.wait(execution_id, timeout_s=300)
    print_history(client.steps(execution_id))
    print(f"\nexecution {execution_id}: {record['status']} in {record['duration_ms']} ms")
    if record["error"]:
        print(f"error: {record['error']}")
    print(json.dumps(record["outputs"], indent=2))
    return 0 if record["status"] == "completed" else 3


if __name__ == "__main__":
    sys.exit(main())
