"""The engine on a real local Ray against the real demo services, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry, stored_checkpoints

EXAMPLES = Path(__file__).parents[2] / "examples"
pytestmark = pytest.mark.timeout(180)


def _inputs() -> dict[str, Any]:
    return json.loads((EXAMPLES / "loan-approval.inputs.json").read_text())




def test_example_pack_completes_with_its_outputs(engine_db: str, demo_services: Any, make_client: Any) -> None:
    client = make_client(engine_db, demo_registry(demo_services.url))
    execution_id = client.start(EXAMPLES / "loan-approval.yaml", _inputs())
    record = client.wait(execution_id, timeout_s=120)

    assert record["status"] == "completed", record
    outputs = record["outputs"]
    assert outputs["identity_valid"] is True and outputs["income_valid"] is True
    assert outputs["risk"] == "high" and outputs["approval_route"] == "manager"
    assert outputs["items_checked"] == 3
    assert outputs["first_item"] == {"sku": "LAPTOP-13", "valid": True, "total": 2400.0}
    assert outputs["ledger_entry"].startswith("le-")
    completed = record["completed_steps"]
    for key in ("identity-check", "validations", "check-items", "manager-review", "record-decision"):
        assert key in completed
    assert "auto-approve" not in completed
    assert not any("/" in key for key in completed)  # iterations are in the step history only
    # Order: a step completes only after what it depends on.
    assert completed.index("validations") < completed.index("compliance-check") < completed.index("record-decision")
    assert record["duration_ms"] >= 0 and record["error"] is None

    # The record read back from the database in this process equals the one the host gave.
    from actors.driver import read_record

    assert asyncio.run(read_record(engine_db, execution_id)) == record
    keys = {(cp.step_key, cp.attempt, cp.status) for cp in stored_checkpoints(engine_db, execution_id)}
    assert ("check-items[1]/validate-item", 1, "completed") in keys


def test_condition_takes_the_else_branch_for_small_amounts(
    engine_db: str, demo_services: Any, make_client: Any
) -> None:
    client = make_client(engine_db, demo_registry(demo_services.url))
    inputs = {**_inputs(), "amount": 500}
    record = client.run(EXAMPLES / "loan-approval.yaml", inputs, timeout_s=120)
    assert record["status"] == "completed"
    assert record["outputs"]["approval_route"] == "automatic" and record["outputs"]["risk"] == "low"
    assert "auto-approve" in record["completed_steps"] and "manager-review" not in record["completed_steps"]


def test_retry_with_backoff_sends_the_same_idempotency_key(
    engine_db: str, demo_services: Any, make_client: Any
) -> None:
    from serve_app.demo_services import Fault

    demo_services.set_faults([Fault(path="/validation/v1/income", fail_first=2, status=503)])
    try:
        client = make_client(engine_db, demo_registry(demo_services.url))
        before = demo_services.calls()
        execution_id = client.start(EXAMPLES / "loan-approval.yaml", _inputs())
        record = client.wait(execution_id, timeout_s=120)
        after = demo_services.calls()
    finally:
        demo_services.set_faults([])
    assert record["status"] == "completed"
    key = f"{execution_id}/income-check"
    assert after["by_idempotency_key"].get(key) == 3  # two failures, then success, one key
    calls = after["by_path"]["POST /validation/v1/income"] - before["by_path"].get("POST /validation/v1/income", 0)
    assert calls == 3
    attempts = [(cp.attempt, cp.status) for cp in stored_checkpoints(engine_db, execution_id) if cp.step_key == "income-check"]
    assert sorted(attempts) == [(1, "failed"), (2, "failed"), (3, "completed")]


def test_step_failing_for_good_fails_the_run_with_step_kind_and_attempts(
    engine_db: str, demo_services: Any, make_client: Any
) -> None:
    from serve_app.demo_services import Fault

    demo_services.set_faults([Fault(path="/compliance/v1/check", fail_first=100, status=503)])
    try:
        client = make_client(engine_db, demo_registry(demo_services.url))
        record = client.run(EXAMPLES / "loan-approval.yaml", _inputs(), options={"max_retries": 1}, timeout_s=120)
    finally:
        demo_services.set_faults([])
    assert record["status"] == "failed"
    detail = record["error_detail"]
    assert detail["step"] == "compliance-check" and detail["kind"] == "http_status" and detail["attempts"] == 2
    assert "compliance-check" in record["error"] and "503" in record["error"]
    assert "record-decision" not in record["completed_steps"]


def test_dedicated_isolation_runs_on_a_host_of_its_own(
    engine_sqlite_url: str, demo_services: Any, make_client: Any
) -> None:
    import ray

    from actors.host import dedicated_host_name

    client = make_client(engine_sqlite_url, demo_registry(demo_services.url))
    execution_id = client.start(EXAMPLES / "loan-approval.yaml", _inputs(), options={"isolation": "dedicated"})
    handle = ray.get_actor(dedicated_host_name(execution_id), namespace=client._namespace)
    assert ray.get(handle.active.remote()) in ([execution_id], [])
    record = client.wait(execution_id, timeout_s=120)
    assert record["status"] == "completed"


def test_cancel_stops_a_running_step(engine_sqlite_url: str, demo_services: Any, make_client: Any) -> None:
    import time

    from serve_app.demo_services import Fault

    demo_services.set_faults([Fault(path="/compliance/v1/check", hang=True)])
    try:
        client = make_client(engine_sqlite_url, demo_registry(demo_services.url))
        execution_id = client.start(EXAMPLES / "loan-approval.yaml", _inputs())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.status(execution_id)["current_step"] != "compliance-check":
            time.sleep(0.1)
        started = time.monotonic()
        record = client.cancel(execution_id)
        elapsed = time.monotonic() - started
    finally:
        demo_services.set_faults([])
    assert record["status"] == "cancelled"
    assert elapsed < 10
    assert "record-decision" in record["error_detail"]["never_ran"]
    again = client.cancel(execution_id)
    assert again["status"] == "cancelled" and again["completed_at"] == record["completed_at"]


def test_memory_store_when_persistence_is_off(demo_services: Any, make_client: Any) -> None:
    client = make_client("memory://", demo_registry(demo_services.url))
    record = client.run(EXAMPLES / "loan-approval.yaml", _inputs(), timeout_s=120)
    assert record["status"] == "completed" and record["outputs"]["items_checked"] == 3
    assert "memory only" in record["persistence"]  # the record says what is given up
