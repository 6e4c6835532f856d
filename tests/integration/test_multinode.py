"""Several Ray nodes: steps spread over them, the node each attempt ran on is recorded, and a
run survives the loss of a worker node while its steps run there.

The multi-node part runs ``tests/integration/multinode_scenario.py`` in a child process with
its own ``ray.cluster_utils.Cluster`` (a head without CPUs and two one-CPU workers on this
machine; see the script's docstring for why that makes the steps spread), its own SQLite
file and the demo services. The child is needed because this session's process is already
connected to the Ray of the ``ray_session`` fixture. SQLite is enough here because every
node is on this machine; a cluster of several machines needs PostgreSQL (``docs/deploy.md``).

The scenario runs once for the module (its cluster takes about 10 s to start); the tests
below each check one part of its result. Nothing here skips, under ``CI=true`` or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "integration" / "multinode_scenario.py"
RESULT_MARK = "MULTINODE-RESULT "

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON result of ``multinode_scenario.py`` (both scenarios, one cluster)."""
    database = tmp_path_factory.mktemp("multinode") / "cortx.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--database-url", f"sqlite+aiosqlite:///{database}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert done.returncode == 0 and lines, (
        f"the multi-node scenario failed (exit {done.returncode}):\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
    )
    return dict(json.loads(lines[-1][len(RESULT_MARK):]))


def _work(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for step in history["steps"] if step["step_type"] == "service_call"]


def test_the_cluster_head_avoids_port_6379_and_hosts_the_execution_host(scenario: dict[str, Any]) -> None:
    assert scenario["gcs_port"] != 6379
    assert scenario["host_node_id"] == scenario["head_node_id"]
    assert len(set(scenario["worker_node_ids"])) == 2
    assert scenario["head_node_id"] not in scenario["worker_node_ids"]


def test_parallel_iterations_run_on_more_than_one_node(scenario: dict[str, Any]) -> None:
    result = scenario["spread"]
    assert result["record"]["status"] == "completed", result["record"]
    work = _work(result["history"])
    assert sorted(step["step_key"] for step in work) == [f"fan-out[{i}]/validate-item" for i in range(6)]
    nodes = {step["node_id"] for step in work}
    # Each step ran on a worker (the head has no CPU), and on more than one of them.
    assert nodes <= set(scenario["worker_node_ids"]), nodes
    assert len(nodes) >= 2, f"all six iterations ran on one node: {nodes}"


def test_control_steps_have_no_node(scenario: dict[str, Any]) -> None:
    from serve_app.schemas import StepHistory

    StepHistory.model_validate(scenario["spread"]["history"])  # the documented API shape, node_id included
    steps = scenario["spread"]["history"]["steps"]
    control = {step["step_key"]: step["node_id"] for step in steps if step["step_type"] != "service_call"}
    assert control == {"fan-out": None, "all-done": None}


def test_a_run_completes_when_a_worker_node_is_lost_mid_step(scenario: dict[str, Any]) -> None:
    result = scenario["node_loss"]
    record, history = result["record"], result["history"]
    assert record["status"] == "completed", record
    removed, surviving = result["removed_node_id"], result["surviving_node_id"]
    work = _work(history)

    # The attempt that was running on the removed node ended as a lost task (node unknown)...
    lost = [step for step in work if step["status"] == "failed"]
    assert lost, "no attempt was lost with the removed node"
    lost_key = lost[0]["step_key"]
    assert f"{record['execution_id']}/{lost_key}" in result["in_flight_at_removal"]
    for step in lost:
        # (a second lost attempt is possible if Ray leased the retry to the dying node)
        assert step["step_key"] == lost_key, lost
        assert step["error"]["kind"] == "task_error" and step["error"]["will_retry"] is True
        assert step["node_id"] is None

    # ...and ran again, with the same idempotency key, on the node that is left.
    again = [step for step in work if step["step_key"] == lost_key and step["status"] == "completed"]
    assert [(step["attempt"], step["node_id"]) for step in again] == [(len(lost) + 1, surviving)]
    assert again[0]["idempotency_key"] == lost[0]["idempotency_key"]
    assert result["calls_by_key"][f"{record['execution_id']}/{lost_key}"] >= 2

    # Every iteration completed, and none after the loss ran on the removed node.
    completed = {step["step_key"] for step in work if step["status"] == "completed"}
    assert completed == {f"fan-out[{i}]/validate-item" for i in range(4)}
    assert all(step["node_id"] in {surviving, removed} for step in work if step["status"] == "completed")
    assert all(step["node_id"] != removed for step in work if step["attempt"] > 1)


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_step_history_records_the_node_of_each_attempt(make_client: Any, engine_db: str, demo_services: Any) -> None:
    """On the session's one-node Ray: a work step records that node, a control step none."""
    import asyncio

    import ray

    from persistence.store import open_store

    pack = {
        "id": "node-id-history",
        "name": "Node ids in the step history",
        "version": "1.0.0",
        "inputs": {"type": "object", "properties": {"amount": {"type": "number"}}},
        "steps": [
            {"id": "route", "type": "condition", "condition": "inputs.amount > 10", "then": [
                {"id": "check", "type": "service_call", "service": "validation", "endpoint": "/v1/item",
                 "inputs": {"sku": "N-1", "quantity": 1, "unit_price": "${ inputs.amount }"}},
            ]},
        ],
    }
    client = make_client(engine_db, demo_registry(demo_services.url))
    record = client.run(pack, {"amount": 25}, timeout_s=45)
    assert record["status"] == "completed", record

    async def checkpoints() -> list[Any]:
        store = await open_store(engine_db, pool_size=1, migrate=False)
        try:
            return await store.load_checkpoints(record["execution_id"])
        finally:
            await store.close()

    nodes = {cp.step_key: cp.node_id for cp in asyncio.run(checkpoints())}
    assert nodes == {"check": ray.get_runtime_context().get_node_id(), "route": None}
