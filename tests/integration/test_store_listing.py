"""``Store.list_executions_page``: filters and keyset pagination (added for the HTTP API's listing).

Run against SqlStore on SQLite and PostgreSQL and against MemoryStore (the same contract).
Pack ids carry a random suffix, since the PostgreSQL database is shared by the session;
every query filters on them or on a time window that only this test's rows fall into.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from persistence import ExecutionRecord, SqlStore, Store
from persistence.models import EXECUTIONS
from tests.conftest import with_store



async def create(store: Store, pack_id: str, status: str = "running") -> ExecutionRecord:
    record = await store.create_execution(
        execution_id=str(uuid.uuid4()), workflow_pack_id=pack_id, version="1.0.0",
        pack_document={"id": pack_id, "version": "1.0.0", "steps": []}, inputs={}, options={},
    )
    if status != "running":
        claimed = await store.claim_execution(record.execution_id)
        record = await store.finish_execution(record.execution_id, owner_epoch=claimed.owner_epoch, status=status)
    await asyncio.sleep(0.002)  # distinct created_at (ties are tested separately)
    return record


async def all_pages(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        rows = await store.list_executions_page(after=after, limit=limit + 1, **filters)
        page, more = rows[:limit], len(rows) > limit
        pages.append([r.execution_id for r in page])
        if not more:
            return pages
        after = (page[-1].created_at, page[-1].execution_id)


@pytest.mark.timeout(60)
def test_pages_walk_every_row_once_newest_first_with_each_filter(store_url: str) -> None:
    pid, other = f"list-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"

    async def body(store: Store) -> None:
        statuses = ["completed", "running", "failed", "completed", "cancelled", "running", "completed"]
        mine = [await create(store, pid, status) for status in statuses]
        theirs = [await create(store, other) for _ in range(2)]
        newest_first = [r.execution_id for r in reversed(mine)]

        pages = await all_pages(store, 3, workflow_pack_id=pid)
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [eid for page in pages for eid in page] == newest_first
        assert await all_pages(store, 7, workflow_pack_id=pid) == [newest_first]
        assert await all_pages(store, 100, workflow_pack_id=other) == [[r.execution_id for r in reversed(theirs)]]

        done = await all_pages(store, 2, workflow_pack_id=pid, statuses=["completed"])
        assert [eid for page in done for eid in page] == [r.execution_id for r in reversed(mine) if r.status == "completed"]
        ended = await store.list_executions_page(workflow_pack_id=pid, statuses={"failed", "cancelled"}, limit=10)
        assert {r.status for r in ended} == {"failed", "cancelled"} and len(ended) == 2
        assert await store.list_executions_page(workflow_pack_id=pid, statuses=[], limit=10) == []

        # Time window: created_after is inclusive, created_before exclusive.
        window = await store.list_executions_page(
            workflow_pack_id=pid, created_after=mine[2].created_at, created_before=mine[5].created_at, limit=100
        )
        assert [r.execution_id for r in window] == [r.execution_id for r in reversed(mine[2:5])]
        since = await store.list_executions_page(workflow_pack_id=other, created_after=theirs[1].created_at, limit=100)
        assert [r.execution_id for r in since] == [theirs[1].execution_id]
        # Naive datetimes are UTC; aware ones in another zone mean the same instant.
        naive = mine[3].created_at.astimezone(UTC).replace(tzinfo=None)
        zoned = mine[3].created_at.astimezone(datetime.now().astimezone().tzinfo)
        for bound in (naive, zoned):
            got = await store.list_executions_page(workflow_pack_id=pid, created_before=bound, limit=100)
            assert [r.execution_id for r in got] == [r.execution_id for r in reversed(mine[:3])]

        assert await store.list_executions_page(workflow_pack_id=f"none-{uuid.uuid4().hex}", limit=5) == []
        for impossible in ("a\x00b", "\ud800", "x" * 201):
            assert await store.list_executions_page(workflow_pack_id=impossible, limit=5) == []
        future = datetime.now(UTC) + timedelta(days=1)
        assert await store.list_executions_page(created_after=future, limit=5) == []

    with_store(store_url, body)


@pytest.mark.timeout(60)
def test_rows_created_at_the_same_instant_are_ordered_by_id_and_never_repeated(store_url: str) -> None:
    pid = f"tie-{uuid.uuid4().hex[:8]}"

    async def body(store: Store) -> None:
        rows = [await create(store, pid) for _ in range(5)]
        instant = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
        if isinstance(store, SqlStore):
            async with store.engine.begin() as conn:
                await conn.execute(
                    update(EXECUTIONS)
                    .where(EXECUTIONS.c.execution_id.in_([r.execution_id for r in rows]))
                    .values(created_at=instant)
                )
        else:  # MemoryStore: same effect through its private table
            import dataclasses

            for r in rows:
                store._executions[r.execution_id] = dataclasses.replace(  # type: ignore[attr-defined]
                    store._executions[r.execution_id], created_at=instant  # type: ignore[attr-defined]
                )
        expected = sorted((r.execution_id for r in rows), reverse=True)
        pages = await all_pages(store, 2, workflow_pack_id=pid)
        assert [eid for page in pages for eid in page] == expected and [len(p) for p in pages] == [2, 2, 1]
        fetched = await store.list_executions_page(workflow_pack_id=pid, limit=10)
        assert all(r.created_at == instant for r in fetched)
        # The keyset position survives the microseconds.
        after = await store.list_executions_page(workflow_pack_id=pid, after=(instant, expected[0]), limit=10)
        assert [r.execution_id for r in after] == expected[1:]

    with_store(store_url, body)


@pytest.mark.timeout(30)
def test_bad_arguments_are_value_errors(store_url: str) -> None:
    async def body(store: Store) -> None:
        bad: list[dict[str, Any]] = [
            {"limit": 0}, {"limit": True}, {"limit": 1.5}, {"created_after": "2024-01-01"},
            {"created_before": 5}, {"after": ("2024", "x")}, {"after": (datetime.now(UTC),)}, {"workflow_pack_id": 3},
        ]
        for arguments in bad:
            with pytest.raises(ValueError):
                await store.list_executions_page(**arguments)

    with_store(store_url, body)
