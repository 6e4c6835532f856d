"""Admission control in the store (FDD §9.2): a limit on running runs, FIFO, no double admission."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from persistence.store import Store, open_store
from tests.conftest import with_store

PACK: dict[str, Any] = {"id": "demo", "version": "1.0.0", "name": "Demo", "steps": []}


async def queued_run(store: Store, *, isolation: str = "shared") -> str:
    record = await store.create_execution(
        execution_id=str(uuid.uuid4()),
        workflow_pack_id="demo",
        version="1.0.0",
        pack_document=PACK,
        inputs={},
        options={},
        isolation=isolation,
        status="queued",
    )
    assert record.status == "queued" and record.started_at is None
    return record.execution_id


async def finish(store: Store, execution_id: str) -> None:
    run = await store.claim_execution(execution_id)
    await store.finish_execution(execution_id, owner_epoch=run.owner_epoch, status="completed", outputs={})


async def admits_oldest_first_up_to_the_limit(store: Store) -> None:
    ids = [await queued_run(store) for _ in range(5)]
    assert await store.count_by_status() == {"queued": 5, "running": 0}
    first = await store.admit_queued(2)
    assert [r.execution_id for r in first] == ids[:2]
    assert all(r.status == "running" and r.started_at is not None and r.owner_epoch == 0 for r in first)
    assert await store.admit_queued(2) == []  # no slot free
    assert await store.count_by_status() == {"queued": 3, "running": 2}
    await finish(store, ids[0])
    assert [r.execution_id for r in await store.admit_queued(2)] == [ids[2]]
    assert [r.execution_id for r in await store.admit_queued(10)] == ids[3:]
    assert await store.admit_queued(10) == []  # nothing queued


async def a_queued_run_cannot_be_claimed_before_admission(store: Store) -> None:
    eid = await queued_run(store)
    claimed = await store.claim_execution(eid)
    assert (claimed.status, claimed.owner_epoch, claimed.started_at) == ("queued", 0, None)
    (admitted,) = await store.admit_queued(1)
    assert await store.unclaimed_running(0.0) == [(eid, "shared")]
    claimed = await store.claim_execution(eid)
    assert (claimed.status, claimed.owner_epoch, claimed.started_at) == ("running", 1, admitted.started_at)
    assert await store.unclaimed_running(0.0) == []


async def cancel_queued_only_cancels_what_is_still_queued(store: Store) -> None:
    waiting, admitted = await queued_run(store), await queued_run(store)
    await store.admit_queued(1)  # admits the older one: ``waiting``
    waiting, admitted = admitted, waiting
    cancelled = await store.cancel_queued(waiting)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.completed_at is not None and "before it started" in (cancelled.error or "")
    assert await store.cancel_queued(waiting) is None  # already cancelled
    assert await store.cancel_queued(admitted) is None  # running: cancelled the usual way
    assert await store.cancel_queued("not-a-uuid") is None
    assert (await store.get_execution(admitted)).status == "running"
    assert await store.admit_queued(5) == []  # a cancelled run is never admitted


async def bad_limit_is_refused(store: Store) -> None:
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(ValueError, match="max_running"):
            await store.admit_queued(bad)  # type: ignore[arg-type]


BODIES = [
    admits_oldest_first_up_to_the_limit,
    a_queued_run_cannot_be_claimed_before_admission,
    cancel_queued_only_cancels_what_is_still_queued,
    bad_limit_is_refused,
]


@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
def test_admission_on_databases(fresh_database_url: str, body: Any) -> None:
    with_store(fresh_database_url, body)


@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
def test_admission_in_memory(body: Any) -> None:
    with_store("memory://", body)


def test_concurrent_admitters_never_admit_a_run_twice_nor_pass_the_limit(fresh_database_url: str) -> None:
    """Several replicas (each its own engine and pool) admit from one queue at the same time."""
    admission_url = fresh_database_url
    limit, runs, admitters = 7, 40, 4

    async def body() -> None:
        stores = [await open_store(admission_url) for _ in range(admitters)]
        try:
            ids = [await queued_run(stores[0]) for _ in range(runs)]
            admitted: list[str] = []

            async def admitter(store: Store) -> None:
                mine: list[str] = []
                for _ in range(30):
                    got = [r.execution_id for r in await store.admit_queued(limit)]
                    admitted.extend(got)
                    mine.extend(got)
                    counts = await store.count_by_status()
                    assert counts["running"] <= limit, counts
                    if mine:  # finish one of the runs this admitter admitted, freeing a slot
                        await finish(store, mine.pop(0))

            await asyncio.gather(*(admitter(s) for s in stores))
            assert len(admitted) == len(set(admitted)), "a run was admitted twice"
            # first in, first out: whatever got in is always the oldest part of the queue
            assert set(admitted) == set(ids[: len(admitted)])
            assert len(admitted) >= limit
        finally:
            for s in stores:
                await s.close()

    asyncio.run(body())
