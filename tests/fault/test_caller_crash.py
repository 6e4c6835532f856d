"""Real faults: a service caller (``actors.callers``) is killed while it holds a call.

With ``CORTX_SERVICE_CALLERS`` above 0 (opt-in) a shared host sends its service calls to the
caller actors it owns. Killing a caller's
process mid-call must fail that attempt as a retryable ``task_error``, like a lost Ray task;
Ray restarts the caller, and the engine's retry, with the same idempotency key, completes
the run. A dedicated host sends its calls as Ray tasks and starts no caller, as does a
shared host by default.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry, loan_inputs, stored_checkpoints, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"
pytestmark = pytest.mark.timeout(240)


def _calls(demo: Any, execution_id: str, step_key: str) -> int:
    return int(demo.calls()["by_idempotency_key"].get(f"{execution_id}/{step_key}", 0))


def test_a_killed_caller_fails_its_call_as_retryable_and_the_retry_completes(
    engine_db: str, demo_services: Any, make_client: Any
) -> None:
    import ray

    from actors.host import shared_host_name
    from serve_app.demo_services import Fault

    client = make_client(engine_db, demo_registry(demo_services.url), service_callers=2, service_call_concurrency=4)
    demo_services.set_faults([Fault(path="/compliance/v1/check", hang=True)])
    try:
        execution_id = client.start(EXAMPLES / "loan-approval.yaml", loan_inputs())
        wait_for(lambda: _calls(demo_services, execution_id, "compliance-check") > 0, what="the compliance call")
        host = ray.get_actor(shared_host_name(0), namespace=client._namespace)
        callers = ray.get(host.callers.remote(), timeout=30)
        host_pid = ray.get(host.info.remote(), timeout=30)["pid"]
        # The calls run in the callers' processes, not in the host's.
        assert len(callers) == 2 and host_pid not in {caller["pid"] for caller in callers}
        demo_services.set_faults([])
        # Which caller holds the hanging call is Ray's business: kill both.
        for caller in callers:
            os.kill(caller["pid"], signal.SIGKILL)
        record = client.wait(execution_id, timeout_s=120)
        restarted = ray.get(host.callers.remote(), timeout=30)
    finally:
        demo_services.set_faults([])
    assert record["status"] == "completed", (record["error"], record["error_detail"])
    assert record["outputs"]["items_checked"] == 3
    attempts = sorted(
        (cp.attempt, cp.status, (cp.error or {}).get("kind"), (cp.error or {}).get("message"))
        for cp in stored_checkpoints(engine_db, execution_id)
        if cp.step_key == "compliance-check"
    )
    assert attempts[0][:3] == (1, "failed", "task_error"), attempts
    assert attempts[0][3].startswith("service caller failed: "), attempts
    assert attempts[-1][1] == "completed", attempts
    # The retry carried the same idempotency key to a restarted caller.
    assert _calls(demo_services, execution_id, "compliance-check") >= 2
    assert {caller["pid"] for caller in restarted}.isdisjoint({caller["pid"] for caller in callers})


def test_a_dedicated_host_sends_its_calls_as_tasks(engine_sqlite_url: str, demo_services: Any, make_client: Any) -> None:
    import ray

    from actors.host import dedicated_host_name, shared_host_name

    client = make_client(engine_sqlite_url, demo_registry(demo_services.url), service_callers=1)
    execution_id = client.start(EXAMPLES / "loan-approval.yaml", loan_inputs(), options={"isolation": "dedicated"})
    host = ray.get_actor(dedicated_host_name(execution_id), namespace=client._namespace)
    record = client.wait(execution_id, timeout_s=120)
    assert record["status"] == "completed"
    assert ray.get(host.callers.remote(), timeout=30) == []
    # A shared host, by contrast, starts its one caller when it is created.
    shared = client.run(EXAMPLES / "loan-approval.yaml", loan_inputs(), timeout_s=120)
    assert shared["status"] == "completed"
    callers = ray.get(ray.get_actor(shared_host_name(0), namespace=client._namespace).callers.remote(), timeout=30)
    assert len(callers) == 1


def test_without_callers_a_shared_host_sends_its_calls_as_tasks(
    engine_sqlite_url: str, demo_services: Any, make_client: Any
) -> None:
    import ray

    from actors.host import shared_host_name

    client = make_client(engine_sqlite_url, demo_registry(demo_services.url))  # the default: no callers
    record = client.run(EXAMPLES / "loan-approval.yaml", loan_inputs(), timeout_s=120)
    assert record["status"] == "completed"
    assert ray.get(ray.get_actor(shared_host_name(0), namespace=client._namespace).callers.remote(), timeout=30) == []
    calls = [cp for cp in stored_checkpoints(engine_sqlite_url, record["execution_id"]) if cp.step_type == "service_call"]
    assert calls and all(cp.node_id == ray.get_runtime_context().get_node_id() for cp in calls)


def test_a_cancelled_attempt_queued_at_a_busy_caller_is_not_sent(
    engine_db: str, demo_services: Any, make_client: Any
) -> None:
    # One caller thread: run A's call holds it (a slow upstream), run B's call waits behind
    # it. Cancelling B must keep its call from ever reaching the upstream. Ray's cancel of a
    # queued call does that only for an actor with concurrency groups (actors/callers.py):
    # without the caller's control group, B's call went out once A's was done.
    from serve_app.demo_services import Fault

    pack = {
        "id": "one-call", "name": "One call", "version": "1.0.0",
        "steps": [{"id": "check", "type": "service_call", "service": "validation", "endpoint": "/v1/item",
                   "inputs": {"sku": "S-1", "quantity": 1, "unit_price": 1}}],
    }
    client = make_client(engine_db, demo_registry(demo_services.url), service_callers=1, service_call_concurrency=1)
    demo_services.set_faults([Fault(path="/validation/v1/item", delay_ms=3000)])
    try:
        holder = client.start(pack, {})
        wait_for(lambda: _calls(demo_services, holder, "check") > 0, what="the first call to hold the thread")
        queued = client.start(pack, {})
        wait_for(lambda: client.status(queued)["current_step"] == "check", what="the second run to reach its call")
        time.sleep(1.0)  # its call sent to the caller, waiting there for the thread
        record = client.cancel(queued)
        assert record["status"] == "cancelled"
        assert client.wait(holder, timeout_s=60)["status"] == "completed"
        time.sleep(1.0)  # the caller's thread is free again: a call not dropped would go now
    finally:
        demo_services.set_faults([])
    assert _calls(demo_services, queued, "check") == 0
    # The caller still works for the runs after.
    assert client.run(pack, {}, timeout_s=60)["status"] == "completed"
