"""Multi-node scenarios on a Ray cluster of several raylets on this machine, as a child process.

``tests/integration/test_multinode.py`` starts this script with ``subprocess``: the test
session already holds a Ray (``ray_session``) and one process can be connected to one Ray
only, so the cluster gets a process of its own. It prints one line
``MULTINODE-RESULT <json>`` and exits 0, or exits non-zero with a traceback.

The cluster (``ray.cluster_utils.Cluster``): a head with **no CPUs** (its GCS on a free port,
never 6379, the port Redis holds on the development machine), where the driver and the
ExecutionHost live, and two workers with **one CPU each**. Service calls are Ray tasks
(``service_callers=0``, the default, said explicitly: the opt-in caller actors of
``actors.callers`` would not be placed by CPU), and step tasks ask for one CPU
(``step_task_num_cpus=1``), so each worker runs one step at a time and steps must run on the
workers: two steps in flight at once are on two different nodes. That is how the test makes
tasks spread without a custom resource; a real cluster uses fractional CPUs
(``CORTX_STEP_TASK_NUM_CPUS``, default 0.25) and Ray spreads tasks once a node is busy.

Scenarios, in one cluster (one start-up of about 10 s instead of two):

``spread``
    A for-each loop with ``max_concurrency: 4`` over six items, then a condition. Result:
    the step history (``serve_app.schemas.step_history``, the body of
    ``GET /v1/workflows/executions/{id}/steps``) with each attempt's ``node_id``.
``node_loss``
    A for-each loop with ``max_concurrency: 2`` over four slow items (2 s each). Once two
    calls are in flight (one per worker), the second worker is removed
    (``Cluster.remove_node``, not graceful: its raylet and workers are killed). The task
    lost with it ends as a retryable ``task_error`` and the engine runs it again on the
    surviving worker; the run completes. Result: the removed node's id and the history.

Usage::

    python tests/integration/multinode_scenario.py --database-url sqlite+aiosqlite:///PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: the project is importable from its root
    sys.path.insert(0, str(ROOT))

#: Printed before the JSON result, so stray output of Ray cannot be mistaken for it.
RESULT_MARK = "MULTINODE-RESULT "

#: Faster node-death detection than Ray's defaults (about 30 s), so a lost task is reported
#: in a few seconds. Ray's own option names (src/ray/common/ray_config_def.h).
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}

REGISTRY = {"services": {"validation": {"base_url": "{url}/validation", "timeout_seconds": 30}}}


def _pack(pack_id: str, width: int, with_condition: bool) -> dict[str, Any]:
    """A for-each loop calling Validation ``/v1/item`` per item, ``width`` at once."""
    steps: list[dict[str, Any]] = [
        {
            "id": "fan-out",
            "type": "loop",
            "collection": "inputs.items",
            "item_var": "item",
            "max_concurrency": width,
            "steps": [
                {
                    "id": "validate-item",
                    "type": "service_call",
                    "service": "validation",
                    "endpoint": "/v1/item",
                    "inputs": {
                        "sku": "${ item.sku }",
                        "quantity": "${ item.quantity }",
                        "unit_price": "${ item.unit_price }",
                    },
                    # A lost task is retried soon; the step timeout is only a backstop.
                    "timeout_seconds": 60,
                    "on_error": {"retry": {"max_attempts": 4, "initial_delay_ms": 200, "max_delay_ms": 1000}},
                }
            ],
        }
    ]
    if with_condition:
        steps.append(
            {
                "id": "all-done",
                "type": "condition",
                "dependencies": ["fan-out"],
                "condition": "length(steps.fan-out.outputs) == length(inputs.items)",
                "then": [],
            }
        )
    return {
        "id": pack_id,
        "name": pack_id,
        "version": "1.0.0",
        "inputs": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}},
        "steps": steps,
    }


def _items(count: int) -> list[dict[str, Any]]:
    return [{"sku": f"SKU-{i}", "quantity": 1 + i, "unit_price": 10.0} for i in range(count)]


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != 6379:
            return port


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def _history(database_url: str, execution_id: str) -> dict[str, Any]:
    """The step history exactly as ``GET .../steps`` answers it."""
    from persistence.store import open_store
    from serve_app.schemas import step_history

    async def read() -> dict[str, Any]:
        store = await open_store(database_url, pool_size=1, migrate=False)
        try:
            record = await store.get_execution(execution_id)
            return step_history(record, await store.load_checkpoints(execution_id))
        finally:
            await store.close()

    return asyncio.run(read())


def run(database_url: str) -> dict[str, Any]:
    """Start the cluster, run both scenarios, stop the cluster; return the results as JSON data."""
    import ray
    from ray.cluster_utils import Cluster

    from actors.driver import WorkflowClient
    from actors.host import get_host
    from actors.registry import ServiceRegistry
    from actors.settings import Settings
    from serve_app.demo_services import Fault, start_in_thread

    demo = start_in_thread(port=0)
    registry = ServiceRegistry.from_mapping(json.loads(json.dumps(REGISTRY).replace("{url}", demo.url)))
    # service_callers=0 (the default, said explicitly): every service call is a Ray task,
    # placed by its CPU request; a lost caller actor is tests/fault/test_caller_crash.py's.
    settings = Settings(
        database_url=database_url,
        execution_hosts=1,
        step_task_num_cpus=1.0,
        service_callers=0,
        workflow_timeout_seconds=120.0,
    )
    gcs_port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "gcs_server_port": gcs_port,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    try:
        head_id = cluster.head_node.node_id
        client = WorkflowClient(settings, registry, ray_address=cluster.address, namespace="cortx-multinode")
        client.connect()
        # The host is created while the head is the only node, so it lives there and is not
        # lost with a worker: the node-loss scenario tests a lost step task, not a lost host.
        host = get_host(settings, registry, execution_id=str(uuid.uuid4()), namespace="cortx-multinode")
        ray.get(host.ready.remote(), timeout=60)
        host_node = ray.get(host.info.remote(), timeout=30)["node_id"]
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        results: dict[str, Any] = {
            "gcs_port": gcs_port,
            "head_node_id": head_id,
            "host_node_id": host_node,
            "worker_node_ids": [node.node_id for node in workers],
        }

        # --- spread: parallel iterations land on both workers --------------------------
        demo.set_faults([Fault(path="/validation/v1/item", delay_ms=400)])
        execution_id = client.start(_pack("multinode-spread", 4, True), {"items": _items(6)})
        record = client.wait(execution_id, timeout_s=90)
        results["spread"] = {"record": record, "history": _history(database_url, execution_id)}

        # --- node_loss: a worker is removed while a step runs on it --------------------
        demo.reset()
        demo.set_faults([Fault(path="/validation/v1/item", delay_ms=2000)])
        execution_id = client.start(_pack("multinode-node-loss", 2, False), {"items": _items(4)})
        _wait_for(lambda: demo.calls()["total"] >= 2, 60, "two calls in flight, one on each worker")
        in_flight = sorted(demo.calls()["by_idempotency_key"])
        lost = workers[1]
        cluster.remove_node(lost, allow_graceful=False)
        record = client.wait(execution_id, timeout_s=90)
        results["node_loss"] = {
            "removed_node_id": lost.node_id,
            "surviving_node_id": workers[0].node_id,
            "in_flight_at_removal": in_flight,
            "record": record,
            "history": _history(database_url, execution_id),
            "calls_by_key": demo.calls()["by_idempotency_key"],
        }
        return results
    finally:
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()
            demo.stop()


def main() -> int:
    """Parse the arguments, run the scenarios in a private Ray temp folder, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="sqlite+aiosqlite:/// or postgresql+asyncpg:// URL")
    args = parser.parse_args()
    # A private Ray temp folder: Cluster writes its address to <temp>/ray/ray_current_cluster,
    # and a plain ray.init() elsewhere on this machine must not find and join this cluster.
    # Short, because Ray's socket paths live below it (Unix sockets allow ~100 characters).
    temp = tempfile.mkdtemp(prefix="cxmn")
    os.environ["RAY_TMPDIR"] = temp
    os.environ.pop("RAY_ADDRESS", None)
    try:
        results = run(args.database_url)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    print(RESULT_MARK + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
