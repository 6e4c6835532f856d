"""Admission control in the store: at most N runs ``running`` at once, the rest ``queued``.

FDD §9.2 asks for 100 concurrent executions per instance. An *instance* here is one
deployment, i.e. one database: every ExecutionHost and every Serve replica of it counts
against the same limit, because the count is taken in the database.

How a run gets in:

1. It is stored ``queued`` (``Store.create_execution(status="queued")``).
2. Someone calls :meth:`SqlAdmission.admit_queued` (the host that stored it, a host whose
   run just ended, or a host's periodic pass). In one transaction it counts the
   ``running`` runs and moves the oldest ``queued`` ones (by ``created_at``, then id) to
   ``running`` while the count is under the limit, and returns them.
3. Whoever admitted a run makes its host start it (admission sets ``started_at``; the
   host's claim bumps ``owner_epoch`` from 0).

Two admitters never admit the same run and never together pass the limit: on PostgreSQL
the pass is one call of the ``cortx_admit`` function (migration 0005), whose transaction
first takes ``pg_advisory_xact_lock(ADMISSION_LOCK_KEY)``; on SQLite a
write transaction is ``BEGIN IMMEDIATE`` and so already holds the database's write lock.
The move itself is ``UPDATE ... WHERE status = 'queued'`` and only rows it changed are
returned.

A run admitted but never claimed (its admitter died before telling the host) has
``status = 'running'`` and ``owner_epoch = 0``; :meth:`SqlAdmission.unclaimed_running`
lists them so their hosts can start them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, func, select, text, update

from persistence.models import EXECUTIONS, execution_from_row
from persistence.outbox import finish_event, insert_events_in_transaction
from persistence.records import STATUS_QUEUED, STATUS_RUNNING, ExecutionRecord, utc_now
from persistence.validation import normalize_execution_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["ADMISSION_LOCK_KEY", "CANCELLED_IN_QUEUE", "MemoryAdmission", "SqlAdmission", "check_max_running"]

#: ``pg_advisory_xact_lock`` key that serialises admission passes (any fixed 64-bit value
#: that the migration lock does not use).
ADMISSION_LOCK_KEY: Final = 0x636F727478_02
#: An admission pass on PostgreSQL: ``cortx_admit`` of migration 0005, rows typed as the table's.
_ADMIT_FN: Final = (
    text("SELECT * FROM cortx_admit(:max_running, :lock_key, :now)")
    .bindparams(bindparam("now", type_=EXECUTIONS.c.updated_at.type))
    .columns(*EXECUTIONS.c)
)
#: ``error`` of a run cancelled while it was still queued.
CANCELLED_IN_QUEUE: Final = "cancelled by request before it started"


def check_max_running(max_running: object) -> int:
    """Return ``max_running`` if it is an int >= 1.

    Raises:
        ValueError: anything else (bools included).
    """
    if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
        raise ValueError(f"max_running must be an int >= 1, got {max_running!r}")
    return max_running


def _cancel_detail() -> dict[str, Any]:
    return {"kind": "cancelled", "message": CANCELLED_IN_QUEUE, "queued": True}


class SqlAdmission:
    """Admission methods of :class:`persistence.sql_store.SqlStore` (a mixin; see module doc)."""

    _engine: AsyncEngine
    _writer: AsyncEngine
    _dialect: str

    def _check_open(self) -> None:  # pragma: no cover - provided by SqlStore
        raise NotImplementedError

    async def admit_queued(self, max_running: int) -> list[ExecutionRecord]:
        """Move the oldest ``queued`` runs to ``running`` while fewer than ``max_running`` run.

        Args:
            max_running: the limit (FDD §9.2; ``CORTX_MAX_CONCURRENT_EXECUTIONS``).

        Returns:
            The runs this call admitted, oldest first (``started_at`` set, ``owner_epoch``
            still 0); empty when nothing is queued or no slot is free.

        Raises:
            ValueError: ``max_running`` is not an int >= 1.
        """
        self._check_open()
        check_max_running(max_running)
        if self._dialect == "postgresql":
            # The same pass in one call of cortx_admit (migration 0005): one round trip.
            params = {"max_running": max_running, "lock_key": ADMISSION_LOCK_KEY, "now": utc_now()}
            async with self._autocommit.connect() as conn:
                rows = (await conn.execute(_ADMIT_FN, params)).mappings().all()
            return sorted((execution_from_row(row) for row in rows), key=lambda r: (r.created_at, r.execution_id))
        queued = select(EXECUTIONS.c.execution_id).where(EXECUTIONS.c.status == STATUS_QUEUED).limit(1)
        async with self._engine.connect() as conn:
            if (await conn.execute(queued)).first() is None:
                return []  # the common case costs one indexed read and no lock
        now = utc_now()
        async with self._writer.begin() as conn:
            if self._dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK_KEY})
            running = await conn.scalar(
                select(func.count()).select_from(EXECUTIONS).where(EXECUTIONS.c.status == STATUS_RUNNING)
            )
            slots = max_running - int(running or 0)
            if slots <= 0:
                return []
            oldest = (
                select(EXECUTIONS.c.execution_id)
                .where(EXECUTIONS.c.status == STATUS_QUEUED)
                .order_by(EXECUTIONS.c.created_at, EXECUTIONS.c.execution_id)
                .limit(slots)
            )
            ids = [row[0] for row in await conn.execute(oldest)]
            if not ids:
                return []
            stmt = (
                update(EXECUTIONS)
                .where(EXECUTIONS.c.execution_id.in_(ids), EXECUTIONS.c.status == STATUS_QUEUED)
                .values(status=STATUS_RUNNING, started_at=now, updated_at=now)
                .returning(*EXECUTIONS.c)
            )
            records = [execution_from_row(row) for row in (await conn.execute(stmt)).mappings()]
        return sorted(records, key=lambda r: (r.created_at, r.execution_id))

    async def cancel_queued(self, execution_id: str) -> ExecutionRecord | None:
        """Cancel a run that has not been admitted yet (``queued`` -> ``cancelled``).

        Returns:
            The cancelled record, or ``None`` when the run was not ``queued`` (admitted,
            ended, or unknown): the caller then cancels it the usual way.
        """
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            return None
        now = utc_now()
        stmt = (
            update(EXECUTIONS)
            .where(EXECUTIONS.c.execution_id == eid, EXECUTIONS.c.status == STATUS_QUEUED)
            .values(
                status="cancelled",
                error=CANCELLED_IN_QUEUE,
                error_detail=_cancel_detail(),
                completed_at=now,
                updated_at=now,
            )
            .returning(*EXECUTIONS.c)
        )
        async with self._writer.begin() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is not None:  # the outbox: the final event in the same transaction
                await insert_events_in_transaction(
                    conn, eid, [finish_event("cancelled", CANCELLED_IN_QUEUE, _cancel_detail())]
                )
        return None if row is None else execution_from_row(row)

    async def count_by_status(self, statuses: Collection[str] = (STATUS_QUEUED, STATUS_RUNNING)) -> dict[str, int]:
        """``{status: number of executions}`` for each of ``statuses`` (0 when none)."""
        self._check_open()
        stmt = (
            select(EXECUTIONS.c.status, func.count())
            .where(EXECUTIONS.c.status.in_(list(statuses)))
            .group_by(EXECUTIONS.c.status)
        )
        async with self._engine.connect() as conn:
            counts = {status: int(n) for status, n in await conn.execute(stmt)}
        return {status: counts.get(status, 0) for status in statuses}

    async def unclaimed_running(self, older_than_s: float) -> list[tuple[str, str]]:
        """Runs admitted at least ``older_than_s`` s ago that no host has claimed yet.

        Returns:
            ``[(execution_id, isolation), ...]``, oldest first.
        """
        self._check_open()
        cutoff = utc_now() - timedelta(seconds=older_than_s)
        stmt = (
            select(EXECUTIONS.c.execution_id, EXECUTIONS.c.isolation)
            .where(
                EXECUTIONS.c.status == STATUS_RUNNING,
                EXECUTIONS.c.owner_epoch == 0,
                EXECUTIONS.c.updated_at <= cutoff,
            )
            .order_by(EXECUTIONS.c.created_at)
        )
        async with self._engine.connect() as conn:
            return [(row[0], row[1]) for row in await conn.execute(stmt)]


class MemoryAdmission:
    """The same methods for :class:`persistence.memory_store.MemoryStore` (one process only)."""

    _lock: Any
    _executions: dict[str, ExecutionRecord]

    def _check_open(self) -> None:  # pragma: no cover - provided by MemoryStore
        raise NotImplementedError

    async def admit_queued(self, max_running: int) -> list[ExecutionRecord]:
        """See :meth:`SqlAdmission.admit_queued`."""
        self._check_open()
        check_max_running(max_running)
        with self._lock:
            running = sum(1 for r in self._executions.values() if r.status == STATUS_RUNNING)
            queued = sorted(
                (r for r in self._executions.values() if r.status == STATUS_QUEUED),
                key=lambda r: (r.created_at, r.execution_id),
            )
            admitted = []
            now = utc_now()
            for record in queued[: max(0, max_running - running)]:
                record = dataclasses.replace(record, status=STATUS_RUNNING, started_at=now, updated_at=now)
                self._executions[record.execution_id] = record
                admitted.append(dataclasses.replace(record))
        return admitted

    async def cancel_queued(self, execution_id: str) -> ExecutionRecord | None:
        """See :meth:`SqlAdmission.cancel_queued`."""
        self._check_open()
        with self._lock:
            eid = normalize_execution_id(execution_id)
            record = None if eid is None else self._executions.get(eid)
            if record is None or record.status != STATUS_QUEUED:
                return None
            now = utc_now()
            record = dataclasses.replace(
                record,
                status="cancelled",
                error=CANCELLED_IN_QUEUE,
                error_detail=_cancel_detail(),
                completed_at=now,
                updated_at=now,
            )
            self._executions[record.execution_id] = record
            self._append_events_locked(  # type: ignore[attr-defined]  # MemoryOutbox, same store
                record.execution_id, [finish_event("cancelled", CANCELLED_IN_QUEUE, _cancel_detail())], now
            )
            return dataclasses.replace(record)

    async def count_by_status(self, statuses: Collection[str] = (STATUS_QUEUED, STATUS_RUNNING)) -> dict[str, int]:
        """See :meth:`SqlAdmission.count_by_status`."""
        self._check_open()
        with self._lock:
            return {s: sum(1 for r in self._executions.values() if r.status == s) for s in statuses}

    async def unclaimed_running(self, older_than_s: float) -> list[tuple[str, str]]:
        """See :meth:`SqlAdmission.unclaimed_running`."""
        self._check_open()
        cutoff = utc_now() - timedelta(seconds=older_than_s)
        with self._lock:
            found = [
                r
                for r in self._executions.values()
                if r.status == STATUS_RUNNING and r.owner_epoch == 0 and r.updated_at <= cutoff
            ]
        return [(r.execution_id, r.isolation) for r in sorted(found, key=lambda r: r.created_at)]
