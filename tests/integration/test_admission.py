"""Admission control end to end on Ray (FDD §9.2): a limit on running runs, FIFO, queued cancel.

Each test uses a database of its own (admission counts every ``running`` run in it) and
the demo echo service on a path of its own, slowed by a fault so runs overlap.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from tests.conftest import demo_registry


def slow_pack(path: str) -> dict[str, Any]:
    return {
        "id": "admission-probe",
        "name": "Admission probe",
        "version": "1.0.0",
        "steps": [{"id": "slow", "type": "service_call", "service": "echo", "endpoint": path, "inputs": {}}],
    }


class RunningSampler:
    """Samples ``count_by_status`` in the database every 50 ms and keeps the largest ``running``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.max_running = 0
        self.samples = 0
        self._stop = threading.Event()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._loop())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self._failure.append(exc)

    async def _loop(self) -> None:
        from persistence.store import open_store

        store = await open_store(self.database_url, pool_size=1)
        try:
            while not self._stop.is_set():
                counts = await store.count_by_status(("running",))
                self.max_running = max(self.max_running, counts["running"])
                self.samples += 1
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._failure:
            raise self._failure[0]


@pytest.mark.timeout(240)
def test_runs_beyond_the_limit_queue_and_start_in_order(
    fresh_database_url: str, demo_services: Any, make_client: Any
) -> None:
    from serve_app.demo_services import Fault

    path = f"/v1/slow-{uuid.uuid4().hex[:8]}"
    # Two hosts: a host whose run ends admits the oldest queued run, often the other host's.
    client = make_client(
        fresh_database_url, demo_registry(demo_services.url), max_concurrent_executions=2, execution_hosts=2
    )
    demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=3000)])
    try:
        ids = [client.start(slow_pack(path)) for _ in range(2)]
        with RunningSampler(fresh_database_url) as sampler:
            ids += [client.start(slow_pack(path)) for _ in range(3)]
            statuses = [client.status(e)["status"] for e in ids]
            assert statuses[:2] == ["running", "running"] and statuses[2:] == ["queued"] * 3, statuses
            depth = client.queue()
            assert depth == {"max_concurrent_executions": 2, "running": 2, "queued": 3}, depth
            records = [client.wait(e, timeout_s=120) for e in ids]
    finally:
        demo_services.set_faults([])
    assert [r["status"] for r in records] == ["completed"] * 5, [r.get("error") for r in records]
    assert sampler.samples > 10 and sampler.max_running <= 2, (sampler.samples, sampler.max_running)
    # first in, first out: the queued runs started in the order they were accepted
    started = [r["started_at"] for r in records]
    assert started[2] <= started[3] <= started[4], started
    assert min(started[2:]) >= max(started[:2]), started
    assert client.queue() == {"max_concurrent_executions": 2, "running": 0, "queued": 0}
    # hand-overs went to the hosts of the client's namespace, never to new ones elsewhere
    import ray

    from actors.host import shared_host_name

    for index in range(2):
        with pytest.raises(ValueError):
            ray.get_actor(shared_host_name(index), namespace=ray.get_runtime_context().namespace)


@pytest.mark.timeout(240)
def test_a_queued_run_cancelled_never_starts(fresh_database_url: str, demo_services: Any, make_client: Any) -> None:
    from serve_app.demo_services import Fault

    path = f"/v1/slow-{uuid.uuid4().hex[:8]}"
    client = make_client(fresh_database_url, demo_registry(demo_services.url), max_concurrent_executions=1)
    demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=1500)])
    try:
        first = client.start(slow_pack(path))
        waiting = client.start(slow_pack(path))
        assert client.status(waiting)["status"] == "queued"
        cancelled = client.cancel(waiting)
        assert cancelled["status"] == "cancelled" and "before it started" in cancelled["error"]
        assert client.cancel(waiting)["status"] == "cancelled"  # a second cancel changes nothing
        assert client.wait(first, timeout_s=60)["status"] == "completed"
        time.sleep(1.5)  # an admission pass has run since the slot freed
    finally:
        demo_services.set_faults([])
    record = client.status(waiting)
    assert record["status"] == "cancelled" and record["completed_steps"] == [] and record["started_at"] is None
    assert not [k for k in demo_services.calls()["by_idempotency_key"] if k.startswith(waiting)]


@pytest.mark.timeout(300)
def test_two_deployments_sharing_a_database_keep_one_limit(
    fresh_database_url: str, demo_services: Any, make_client: Any
) -> None:
    """Two sets of hosts (as two Serve replicas' clients would use) admit from one queue."""
    from serve_app.demo_services import Fault

    path = f"/v1/slow-{uuid.uuid4().hex[:8]}"
    registry = demo_registry(demo_services.url)
    clients = [make_client(fresh_database_url, registry, max_concurrent_executions=3) for _ in range(2)]
    demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=800)])
    ids: list[str] = []
    lock = threading.Lock()

    def submit(client: Any) -> None:
        for _ in range(5):
            execution_id = client.start(slow_pack(path))
            with lock:
                ids.append(execution_id)

    try:
        with RunningSampler(fresh_database_url) as sampler:
            threads = [threading.Thread(target=submit, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            records = [clients[0].wait(e, timeout_s=150) for e in ids]
    finally:
        demo_services.set_faults([])
    assert len(ids) == 10
    assert [r["status"] for r in records] == ["completed"] * 10, [r.get("error") for r in records]
    assert sampler.samples > 10 and sampler.max_running == 3, (sampler.samples, sampler.max_running)
    calls = demo_services.calls()["by_idempotency_key"]
    for execution_id in ids:
        assert calls.get(f"{execution_id}/slow") == 1, (execution_id, calls.get(f"{execution_id}/slow"))


def test_the_dedicated_host_of_a_run_cancelled_while_queued_exits(
    fresh_database_url: str, demo_services: Any, make_client: Any
) -> None:
    import ray

    from actors.host import dedicated_host_name
    from serve_app.demo_services import Fault

    path = f"/v1/slow-{uuid.uuid4().hex[:8]}"
    client = make_client(fresh_database_url, demo_registry(demo_services.url), max_concurrent_executions=1)
    demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=1500)])
    try:
        first = client.start(slow_pack(path))
        waiting = client.start(slow_pack(path), options={"isolation": "dedicated"})
        assert client.status(waiting)["status"] == "queued"
        host = dedicated_host_name(waiting)
        ray.get_actor(host, namespace=client.namespace)  # its host exists, holding nothing
        assert client.cancel(waiting)["status"] == "cancelled"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get_actor(host, namespace=client.namespace)
            except ValueError:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"{host} still alive 30 s after its queued run was cancelled")
        assert client.wait(first, timeout_s=60)["status"] == "completed"
    finally:
        demo_services.set_faults([])
    assert client.status(waiting)["status"] == "cancelled"


@pytest.mark.parametrize("fresh_database_url", ["sqlite"], indirect=True)  # the hand-over is the same on both
def test_an_admitted_run_whose_owner_host_is_gone_is_started_by_another_host(
    fresh_database_url: str, demo_services: Any, make_client: Any
) -> None:
    """A run admitted (by the HTTP API, say) whose hand-over never reached its owner host,
    because that host was killed for good: the other shared host's supervisor hands it over
    once it has waited ``ORPHANED_AFTER_S``, which creates the owner host again."""
    import zlib

    import ray

    from actors.host import ORPHANED_AFTER_S, get_host, shared_host_name, store_submission
    from tests.conftest import with_store

    client = make_client(fresh_database_url, demo_registry(demo_services.url), execution_hosts=2)
    pack = slow_pack("/v1/orphan")
    ids = [str(uuid.uuid4()) for _ in range(200)]
    execution_id = next(e for e in ids if zlib.crc32(e.encode()) % 2 == 0)  # owned by host 0
    other = next(e for e in ids if zlib.crc32(e.encode()) % 2 == 1)
    for eid in (execution_id, other):  # both hosts exist, with their database open and supervising
        host = get_host(client.settings, client.registry, execution_id=eid, namespace=client.namespace)
        ray.get(host.ready.remote(), timeout=60)
    ray.kill(ray.get_actor(shared_host_name(0), namespace=client.namespace), no_restart=True)

    async def submit(store: Any) -> Any:
        return await store_submission(store, client.settings, {"pack": pack, "inputs": {}, "execution_id": execution_id})

    record, admitted = with_store(fresh_database_url, submit)  # stored and admitted; no hand-over
    assert [r.execution_id for r in admitted] == [execution_id]

    async def status(store: Any) -> str:
        return (await store.get_execution(execution_id)).status

    deadline = time.monotonic() + ORPHANED_AFTER_S + 30
    while time.monotonic() < deadline and with_store(fresh_database_url, status) != "completed":
        time.sleep(0.5)
    assert with_store(fresh_database_url, status) == "completed"
    ray.get_actor(shared_host_name(0), namespace=client.namespace)  # created again by the hand-over
