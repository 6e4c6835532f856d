"""Real faults: the host process is killed mid-run; the run resumes and completed steps do not run again.

Each test counts the calls the demo services saw per idempotency key: a completed step is
called exactly once; only the step in flight at the kill may be called once more, with the
same key.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry, loan_inputs, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"
pytestmark = pytest.mark.timeout(240)


def _start_slow_run(client: Any, demo: Any) -> str:
    from serve_app.demo_services import Fault

    # The compliance check hangs, so the kill lands while it is in flight; calls made after
    # the faults are cleared (by the resumed run) are answered.
    demo.set_faults([Fault(path="/compliance/v1/check", hang=True)])
    execution_id = client.start(EXAMPLES / "loan-approval.yaml", loan_inputs())
    wait_for(lambda: _only_compliance_in_flight(client, demo, execution_id), what="the compliance call")
    demo.set_faults([])
    return execution_id


def _only_compliance_in_flight(client: Any, demo: Any, execution_id: str) -> bool:
    # The item checks run beside the compliance check; wait until they are done so that the
    # compliance call is the one step in flight when the host dies.
    return _called(demo, execution_id, "compliance-check") and "check-items" in client.status(execution_id)["completed_steps"]


def _called(demo: Any, execution_id: str, step_key: str) -> bool:
    return demo.calls()["by_idempotency_key"].get(f"{execution_id}/{step_key}", 0) > 0


def _assert_each_step_called_once(demo: Any, execution_id: str, in_flight: str) -> None:
    counts = {k: v for k, v in demo.calls()["by_idempotency_key"].items() if k.startswith(execution_id)}
    for key, count in counts.items():
        step = key.split("/", 1)[1]
        limit = 2 if step == in_flight else 1
        assert count <= limit, f"{step} was called {count} times"
    for step in ("identity-check", "income-check", "record-decision", "check-items[2]/validate-item"):
        assert counts.get(f"{execution_id}/{step}") == 1, (step, counts)


@pytest.mark.parametrize("how", ["os.kill", "ray.kill"])
def test_killed_host_is_restarted_and_the_run_resumes(
    engine_db: str, demo_services: Any, make_client: Any, how: str
) -> None:
    import ray

    from actors.host import shared_host_name

    client = make_client(engine_db, demo_registry(demo_services.url))
    try:
        execution_id = _start_slow_run(client, demo_services)
        host = ray.get_actor(shared_host_name(0), namespace=client._namespace)
        info = ray.get(host.info.remote())
        assert execution_id in info["runs"]
        if how == "os.kill":
            os.kill(info["pid"], signal.SIGKILL)
        else:
            ray.kill(host, no_restart=False)
        record = client.wait(execution_id, timeout_s=120)
        new_info = ray.get(host.info.remote())
    finally:
        demo_services.set_faults([])
    assert new_info["pid"] != info["pid"]
    assert record["status"] == "completed", record
    assert record["outputs"]["items_checked"] == 3
    _assert_each_step_called_once(demo_services, execution_id, in_flight="compliance-check")
    assert len(record["completed_steps"]) == len(set(record["completed_steps"]))


def test_killed_dedicated_host_resumes_its_run(engine_sqlite_url: str, demo_services: Any, make_client: Any) -> None:
    import ray

    from actors.host import dedicated_host_name
    from serve_app.demo_services import Fault

    client = make_client(engine_sqlite_url, demo_registry(demo_services.url))
    demo_services.set_faults([Fault(path="/compliance/v1/check", hang=True)])
    try:
        execution_id = client.start(EXAMPLES / "loan-approval.yaml", loan_inputs(), options={"isolation": "dedicated"})
        wait_for(lambda: _only_compliance_in_flight(client, demo_services, execution_id), what="the compliance call")
        demo_services.set_faults([])
        host = ray.get_actor(dedicated_host_name(execution_id), namespace=client._namespace)
        os.kill(ray.get(host.info.remote())["pid"], signal.SIGKILL)
        record = client.wait(execution_id, timeout_s=120)
    finally:
        demo_services.set_faults([])
    assert record["status"] == "completed"
    _assert_each_step_called_once(demo_services, execution_id, in_flight="compliance-check")


def test_whole_ray_shutdown_then_resume_unfinished(
    engine_sqlite_url: str, demo_services: Any, make_client: Any, ray_session: None
) -> None:
    import ray

    from actors.driver import WorkflowClient, local_ray_system_config

    client = make_client(engine_sqlite_url, demo_registry(demo_services.url))
    runs = []
    try:
        others = [client.start(EXAMPLES / "loan-approval.yaml", loan_inputs()) for _ in range(2)]
        first = _start_slow_run(client, demo_services)
        runs = [first, *others]
        context = ray.get_runtime_context()
        namespace = context.namespace
        ray.shutdown()  # every host and task is gone; the database keeps the runs
        ray.init(
            address="local", include_dashboard=False, namespace=namespace, log_to_driver=False, num_cpus=4,
            _system_config=local_ray_system_config(client.settings.step_task_num_cpus, num_cpus=4),
        )
        fresh = WorkflowClient(client.settings, client.registry, namespace=client._namespace)
        resumed = fresh.resume_unfinished()
        records = [fresh.wait(execution_id, timeout_s=120) for execution_id in runs]
    finally:
        demo_services.set_faults([])
    assert first in resumed  # it was mid-step at the shutdown
    assert all(r["status"] == "completed" for r in records), [r["status"] for r in records]
    _assert_each_step_called_once(demo_services, first, in_flight="compliance-check")
