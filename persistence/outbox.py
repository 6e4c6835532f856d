"""The event outbox: a run's lifecycle events, stored with the state change they describe.

FDD §2.4 "Events: Publish workflow events". Every lifecycle change of a run is written as
a row of ``execution_events`` **in the same transaction** as the change itself:

===================================  =============================================  ========================
event ``type``                       written by (same transaction)                  ``step_key``/``attempt``
===================================  =============================================  ========================
``execution.started`` / ``.resumed`` ``Store.claim_execution`` (epoch 1 / later)    — / —
``step.started``                     ``Store.set_current_step(events=...)`` (or     yes / yes
                                     the attempt's ``write_checkpoint``)
``step.completed`` / ``.failed`` /   ``Store.write_checkpoint(events=...)``, only   yes / yes
``.skipped`` / ``.cancelled``,       when the checkpoint row is new
``step.fallback``, ``step.compensated``,
custom ``emit`` events
``step.retrying``                    ``Store.append_events`` (fenced; no other      yes / yes
                                     state changes)
``execution.completed`` / ``.failed``  ``Store.finish_execution``,                  — / —
/ ``.cancelled``                     ``Store.cancel_queued``
===================================  =============================================  ========================

So the database never holds a state change without its event, nor an event without its
change: a write refused by fencing (:class:`~dsl.errors.FencedError`) leaves no event, and
a checkpoint written again after an ambiguous commit (first write wins) writes no second
event.

``seq`` numbers a run's events 1, 2, 3, ... **without gaps**. On SQL the event is inserted
*after* the fenced ``UPDATE`` of the run's ``executions`` row, which holds that row's lock
until commit (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` holds the database's), so
``seq = max(seq) + 1`` read inside the ``INSERT`` cannot race with another writer of the
same run. The hot path gains exactly one ``INSERT`` per event, no extra transaction.

Delivery cursors (``event_deliveries``): per subscription and run, the last ``seq``
acknowledged by the receiver, and the retry state of the next one. The delivery loop
(:mod:`actors.events_delivery`) reads them; ``docs/events.md`` describes it.

Layering: plain Python and SQLAlchemy Core only; no ``ray``, ``actors`` or ``serve_app``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, case, func, select

from persistence.models import EVENT_DELIVERIES, EXECUTION_EVENTS, EXECUTIONS, json_type
from persistence.records import MAX_STEP_KEY, as_utc, isoformat_z, utc_now
from persistence.validation import MAX_INT32, check_length, normalize_execution_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "EVENT_TYPE_PATTERN",
    "MAX_EVENTS_PER_READ",
    "TERMINAL_EVENT_TYPES",
    "DeliveryCursor",
    "EventHead",
    "MemoryOutbox",
    "NewEvent",
    "SqlOutbox",
    "StoredEvent",
    "check_events",
    "claim_event",
    "event_id",
    "finish_event",
    "insert_events_in_transaction",
]

#: Event types: lower case, dot-separated words (``step.completed``, ``order.shipped``).
EVENT_TYPE_PATTERN: Final = r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$"
_TYPE = re.compile(EVENT_TYPE_PATTERN)
MAX_EVENT_TYPE: Final = 100
MAX_SUBSCRIPTION: Final = 100
#: Most events one read returns (``load_events``); read again from the last ``seq``.
MAX_EVENTS_PER_READ: Final = 1000
#: The last event of every run that ended: nothing follows it.
TERMINAL_EVENT_TYPES: Final = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to write (the store numbers it).

    Attributes:
        type: e.g. ``step.completed``; :data:`EVENT_TYPE_PATTERN`, at most 100 characters.
        step_key: the step execution it is about (``loop[2]/save``), if any.
        attempt: the attempt (from 1) it is about, if any.
        payload: everything else (JSON object): ``step_type``, ``duration_ms``, ``error``
            (a message), ``data`` of an ``emit`` step... Never secrets: callers redact.
    """

    type: str
    step_key: str | None = None
    attempt: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of ``execution_events``.

    Attributes:
        execution_id: the run.
        seq: 1, 2, 3, ... per run, no gaps.
        type: the event type.
        step_key: the step execution, if any.
        attempt: the attempt, if any.
        payload: the other fields (JSON object).
        created_at: when the writer wrote it (aware UTC, the writer's clock), never earlier
            than the run's previous event.
    """

    execution_id: str
    seq: int
    type: str
    step_key: str | None
    attempt: int | None
    payload: dict[str, Any]
    created_at: datetime

    @property
    def event_id(self) -> str:
        """Stable id of this event: :func:`event_id` of ``(execution_id, seq)``."""
        return event_id(self.execution_id, self.seq)

    def to_dict(self) -> dict[str, Any]:
        """The API form (``docs/api.md``): ``{"seq", "type", "at", "event_id", "step_key"?, "attempt"?, **payload}``.

        ``at`` is ISO 8601 UTC with milliseconds; absent fields are left out.
        """
        event: dict[str, Any] = {"seq": self.seq, "type": self.type, "at": isoformat_z(self.created_at),
                                 "event_id": self.event_id}
        if self.step_key is not None:
            event["step_key"] = self.step_key
        if self.attempt is not None:
            event["attempt"] = self.attempt
        for key, value in self.payload.items():
            event.setdefault(key, value)
        return event


@dataclass(frozen=True, slots=True)
class DeliveryCursor:
    """How far one subscription has delivered one run's events.

    Attributes:
        subscription: the subscription's name.
        execution_id: the run.
        delivered_seq: the last ``seq`` acknowledged (0: none yet).
        attempts: failed attempts at delivering ``delivered_seq + 1`` so far.
        next_attempt_at: not before this instant (aware UTC), or None (now).
        last_error: why the last attempt failed, or None.
    """

    subscription: str
    execution_id: str
    delivered_seq: int = 0
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class EventHead:
    """A run with recent events: ``(execution_id, isolation, last_seq)``."""

    execution_id: str
    isolation: str
    last_seq: int


def event_id(execution_id: str, seq: int) -> str:
    """The stable id of event ``seq`` of a run: ``evt_`` + 32 hex digits of SHA-256 of ``<id>/<seq>``.

    The same on every delivery attempt of the event to every subscriber, so it is the
    receivers' deduplication key (the ``webhook-id`` header, the ledger's ``Idempotency-Key``).
    """
    return "evt_" + hashlib.sha256(f"{execution_id}/{seq}".encode()).hexdigest()[:32]


def check_events(events: Iterable[NewEvent] | None) -> list[NewEvent]:
    """Check events before anything is written; return them as a list with JSON-copied payloads.

    Raises:
        ValueError: a type not matching :data:`EVENT_TYPE_PATTERN` or longer than 100
            characters, a step key over the limit, an attempt below 1, a payload that is not
            a JSON object (or holds NaN). TypeError: a payload value JSON cannot hold.
    """
    checked: list[NewEvent] = []
    for index, event in enumerate(events or ()):
        if not isinstance(event, NewEvent):
            raise ValueError(f"events[{index}] must be a NewEvent, got {type(event).__name__}")
        if not isinstance(event.type, str) or len(event.type) > MAX_EVENT_TYPE or not _TYPE.match(event.type):
            raise ValueError(f"events[{index}].type {event.type!r} must match {EVENT_TYPE_PATTERN} (at most 100 characters)")
        if event.step_key is not None:
            check_length(f"events[{index}].step_key", event.step_key, MAX_STEP_KEY)
        if event.attempt is not None and (isinstance(event.attempt, bool) or not isinstance(event.attempt, int)
                                          or not 1 <= event.attempt <= MAX_INT32):
            raise ValueError(f"events[{index}].attempt must be an int from 1 to {MAX_INT32} or None, got {event.attempt!r}")
        if not isinstance(event.payload, dict):
            raise ValueError(f"events[{index}].payload must be a dict, got {type(event.payload).__name__}")
        payload = json.loads(json.dumps(event.payload, allow_nan=False))
        checked.append(dataclasses.replace(event, payload=payload))
    return checked


def claim_event(owner_epoch: int) -> NewEvent:
    """The event of a claim that made ``owner_epoch`` the run's epoch: started (1) or resumed (later)."""
    if owner_epoch <= 1:
        return NewEvent("execution.started")
    return NewEvent("execution.resumed", payload={"owner_epoch": owner_epoch})


def finish_event(status: str, error: str | None, error_detail: dict[str, Any] | None) -> NewEvent:
    """The event of a run that ended ``status``: ``execution.<status>`` with ``error`` and the failed ``step``."""
    payload: dict[str, Any] = {}
    if error is not None:
        payload["error"] = error
    if isinstance(error_detail, dict):
        for key in ("step", "kind"):
            if isinstance(error_detail.get(key), str):
                payload[key] = error_detail[key]
    return NewEvent(f"execution.{status}", payload=payload)


#: Prebuilt statements of the event insert (bind parameters by name): a statement built
#: once keeps its SQLAlchemy cache key, where one built per call is traversed again on every
#: checkpoint (most of the host's CPU per step before; docs/performance.md).
_EVENTS = EXECUTION_EVENTS
#: The run ``:eid``'s last ``seq`` (0 before its first event).
_LAST_SEQ: Final = select(func.coalesce(func.max(_EVENTS.c.seq), 0)).where(
    _EVENTS.c.execution_id == bindparam("eid", type_=_EVENTS.c.execution_id.type)
)
_INSERT_ONE_EVENT: Final = (
    _EVENTS.insert()
    .values(
        execution_id=bindparam("eid", type_=_EVENTS.c.execution_id.type),
        seq=_LAST_SEQ.scalar_subquery() + 1,
        type=bindparam("p_type", type_=_EVENTS.c.type.type),
        step_key=bindparam("p_step_key", type_=_EVENTS.c.step_key.type),
        attempt=bindparam("p_attempt", type_=_EVENTS.c.attempt.type),
        payload=bindparam("p_payload", type_=_EVENTS.c.payload.type),
        created_at=bindparam("p_created_at", type_=_EVENTS.c.created_at.type),
    )
    .returning(_EVENTS.c.seq)
)
_INSERT_EVENTS: Final = _EVENTS.insert()


async def insert_events_in_transaction(
    conn: AsyncConnection, execution_id: str, events: Sequence[NewEvent], now: datetime | None = None
) -> list[int]:
    """Insert ``events`` of a run inside the caller's transaction; return their ``seq`` values.

    Must run **after** the caller's ``UPDATE`` of the run's ``executions`` row in the same
    transaction: that row lock is what makes ``max(seq) + 1`` safe (module docstring).
    ``events`` must have passed :func:`check_events`.

    One event is one statement (``seq`` from a subquery); several are one read of the
    last ``seq`` and one ``executemany`` (pipelined by asyncpg): two round trips however
    many events the attempt wrote.
    """
    if not events:
        return []
    at = as_utc(now or utc_now())
    if len(events) == 1:
        event = events[0]
        params = {"eid": execution_id, "p_type": event.type, "p_step_key": event.step_key,
                  "p_attempt": event.attempt, "p_payload": event.payload, "p_created_at": at}
        return [int((await conn.execute(_INSERT_ONE_EVENT, params)).scalar_one())]
    last = int((await conn.execute(_LAST_SEQ, {"eid": execution_id})).scalar_one())
    seqs = list(range(last + 1, last + 1 + len(events)))
    rows = [
        {"execution_id": execution_id, "seq": seq, "type": event.type, "step_key": event.step_key,
         "attempt": event.attempt, "payload": event.payload, "created_at": at}
        for seq, event in zip(seqs, events, strict=True)
    ]
    await conn.execute(_INSERT_EVENTS, rows)
    return seqs


def _event_from_row(row: Any) -> StoredEvent:
    return StoredEvent(
        execution_id=row["execution_id"],
        seq=int(row["seq"]),
        type=row["type"],
        step_key=row["step_key"],
        attempt=None if row["attempt"] is None else int(row["attempt"]),
        payload=dict(row["payload"] or {}),
        created_at=as_utc(row["created_at"]),
    )


def _check_subscription(subscription: object) -> str:
    if not isinstance(subscription, str) or not subscription or len(subscription) > MAX_SUBSCRIPTION:
        raise ValueError(f"subscription must be a non-empty string of at most {MAX_SUBSCRIPTION} characters")
    return subscription


class SqlOutbox:
    """Outbox and delivery-cursor methods of :class:`persistence.sql_store.SqlStore` (a mixin)."""

    _engine: AsyncEngine
    _writer: AsyncEngine
    _dialect: str

    def _check_open(self) -> None:  # pragma: no cover - provided by SqlStore
        raise NotImplementedError

    def _insert(self, table: Any) -> Any:  # pragma: no cover - provided by SqlStore
        raise NotImplementedError

    def _fenced(self, execution_id: str, owner_epoch: int) -> Any:  # pragma: no cover - provided by SqlStore
        raise NotImplementedError

    async def _refuse(self, execution_id: str, given_id: str, owner_epoch: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    async def append_events(self, execution_id: str, *, owner_epoch: int, events: Sequence[NewEvent]) -> list[int]:
        """Write events that go with no other state change (``step.retrying``), fenced.

        One transaction: the fenced ``UPDATE`` of the run's ``updated_at``, then the events.

        Returns:
            Their ``seq`` values.

        Raises:
            FencedError: stale epoch or terminal run; nothing written.
            ExecutionNotFoundError: no such run.
            ValueError: a malformed event (:func:`check_events`).
        """
        from dsl.errors import ExecutionNotFoundError

        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            raise ExecutionNotFoundError(execution_id)
        checked = check_events(events)
        if self._dialect == "postgresql":  # type: ignore[attr-defined]
            return await self._append_events_pg(eid, execution_id, owner_epoch, None, checked)  # type: ignore[attr-defined]
        now = utc_now()
        async with self._writer.begin() as conn:
            stmt = self._progress_update(False, False, False)  # type: ignore[attr-defined]
            matched = (await conn.execute(stmt, {"eid": eid, "epoch": owner_epoch, "p_updated_at": now})).rowcount
            seqs = await insert_events_in_transaction(conn, eid, checked, now) if matched == 1 else []
        if matched != 1:
            await self._refuse(eid, execution_id, owner_epoch)
        return seqs

    async def load_events(self, execution_id: str, after: int = 0, limit: int = MAX_EVENTS_PER_READ) -> list[StoredEvent]:
        """A run's stored events with ``seq > after``, by ``seq``, at most ``limit``; ``[]`` for an unknown run."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            return []
        t = EXECUTION_EVENTS
        stmt = select(t).where(t.c.execution_id == eid, t.c.seq > int(after)).order_by(t.c.seq).limit(int(limit))
        async with self._engine.connect() as conn:
            return [_event_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def recent_event_heads(self, since: datetime | None) -> list[EventHead]:
        """Runs with an event written at or after ``since`` (all runs with events when None), with their last ``seq``.

        Reads the ``created_at`` index, so a delivery pass costs the recent events only.
        """
        self._check_open()
        t, x = EXECUTION_EVENTS, EXECUTIONS
        recent = select(t.c.execution_id).distinct()
        if since is not None:
            recent = recent.where(t.c.created_at >= bindparam(None, as_utc(since), type_=t.c.created_at.type))
        stmt = (
            select(t.c.execution_id, x.c.isolation, func.max(t.c.seq))
            .join(x, x.c.execution_id == t.c.execution_id)
            .where(t.c.execution_id.in_(recent))
            .group_by(t.c.execution_id, x.c.isolation)
        )
        async with self._engine.connect() as conn:
            return [EventHead(eid, isolation, int(last)) for eid, isolation, last in (await conn.execute(stmt)).all()]

    async def delivery_cursors(self, subscription: str, execution_ids: Collection[str]) -> dict[str, DeliveryCursor]:
        """``{execution_id: cursor}`` of ``subscription`` for those runs that have one (none: nothing delivered)."""
        self._check_open()
        _check_subscription(subscription)
        ids = sorted({i for i in (normalize_execution_id(e) for e in execution_ids) if i is not None})
        out: dict[str, DeliveryCursor] = {}
        d = EVENT_DELIVERIES
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), 500):
                stmt = select(d).where(d.c.subscription == subscription, d.c.execution_id.in_(ids[start:start + 500]))
                for row in (await conn.execute(stmt)).mappings():
                    out[row["execution_id"]] = DeliveryCursor(
                        subscription, row["execution_id"], int(row["delivered_seq"]), int(row["attempts"]),
                        None if row["next_attempt_at"] is None else as_utc(row["next_attempt_at"]), row["last_error"],
                    )
        return out

    async def ack_delivery(self, subscription: str, execution_id: str, seq: int) -> None:
        """Record that ``subscription`` has delivered the run's events up to ``seq`` (never moves back).

        Clears the retry state. Unknown runs are ignored (deleted meanwhile).
        """
        await self._upsert_cursor(subscription, execution_id, seq, None, None)

    async def delivery_failed(self, subscription: str, execution_id: str, *, error: str, retry_at: datetime) -> None:
        """Record a failed attempt at the next event of the run: ``attempts + 1``, retry not before ``retry_at``."""
        await self._upsert_cursor(subscription, execution_id, None, error[:2000], as_utc(retry_at))

    async def _upsert_cursor(
        self, subscription: str, execution_id: str, seq: int | None, error: str | None, retry_at: datetime | None
    ) -> None:
        self._check_open()
        _check_subscription(subscription)
        eid = normalize_execution_id(execution_id)
        if eid is None:
            return
        d = EVENT_DELIVERIES
        ts = d.c.updated_at.type
        now = bindparam(None, utc_now(), type_=ts)
        when = bindparam(None, retry_at, type_=ts)
        stmt = self._insert(d).values(
            subscription=subscription, execution_id=eid, delivered_seq=int(seq or 0),
            attempts=0 if seq is not None else 1, next_attempt_at=when, last_error=error, updated_at=now,
        )
        if seq is not None:
            excluded = stmt.excluded.delivered_seq
            changes = {
                "delivered_seq": case((excluded > d.c.delivered_seq, excluded), else_=d.c.delivered_seq),
                "attempts": 0, "next_attempt_at": None, "last_error": None, "updated_at": now,
            }
        else:
            changes = {"attempts": d.c.attempts + 1, "next_attempt_at": when, "last_error": error, "updated_at": now}
        stmt = stmt.on_conflict_do_update(index_elements=["subscription", "execution_id"], set_=changes)
        from sqlalchemy.exc import IntegrityError

        try:
            async with self._writer.begin() as conn:
                await conn.execute(stmt)
        except IntegrityError:
            return  # the run was deleted: nothing left to deliver


class MemoryOutbox:
    """The same methods for :class:`persistence.memory_store.MemoryStore` (one process only)."""

    _lock: Any
    _executions: dict[str, Any]
    _events: dict[str, list[StoredEvent]]
    _deliveries: dict[tuple[str, str], DeliveryCursor]

    def _check_open(self) -> None:  # pragma: no cover - provided by MemoryStore
        raise NotImplementedError

    def _fenced(self, execution_id: str, owner_epoch: int) -> Any:  # pragma: no cover - provided by MemoryStore
        raise NotImplementedError

    def _append_events_locked(self, execution_id: str, events: Sequence[NewEvent], now: datetime | None = None) -> list[int]:
        """Append checked events of a run (the caller holds ``_lock`` and made the state change)."""
        rows = self._events.setdefault(execution_id, [])
        at = now or utc_now()
        seqs = []
        for event in events:
            rows.append(StoredEvent(execution_id, len(rows) + 1, event.type, event.step_key, event.attempt,
                                    json.loads(json.dumps(event.payload)), at))
            seqs.append(len(rows))
        return seqs

    async def append_events(self, execution_id: str, *, owner_epoch: int, events: Sequence[NewEvent]) -> list[int]:
        """See :meth:`SqlOutbox.append_events`."""
        self._check_open()
        checked = check_events(events)
        with self._lock:
            record = self._fenced(execution_id, owner_epoch)
            now = utc_now()
            self._executions[record.execution_id] = dataclasses.replace(record, updated_at=now)
            return self._append_events_locked(record.execution_id, checked, now)

    async def load_events(self, execution_id: str, after: int = 0, limit: int = MAX_EVENTS_PER_READ) -> list[StoredEvent]:
        """See :meth:`SqlOutbox.load_events`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        with self._lock:
            rows = [e for e in self._events.get(eid or "", []) if e.seq > int(after)]
        return [dataclasses.replace(e, payload=json.loads(json.dumps(e.payload))) for e in rows[: int(limit)]]

    async def recent_event_heads(self, since: datetime | None) -> list[EventHead]:
        """See :meth:`SqlOutbox.recent_event_heads`."""
        self._check_open()
        with self._lock:
            return [
                EventHead(eid, self._executions[eid].isolation, rows[-1].seq)
                for eid, rows in self._events.items()
                if rows and (since is None or rows[-1].created_at >= as_utc(since))
            ]

    async def delivery_cursors(self, subscription: str, execution_ids: Collection[str]) -> dict[str, DeliveryCursor]:
        """See :meth:`SqlOutbox.delivery_cursors`."""
        self._check_open()
        _check_subscription(subscription)
        with self._lock:
            return {
                eid: self._deliveries[(subscription, eid)]
                for eid in (normalize_execution_id(e) for e in execution_ids)
                if eid is not None and (subscription, eid) in self._deliveries
            }

    async def ack_delivery(self, subscription: str, execution_id: str, seq: int) -> None:
        """See :meth:`SqlOutbox.ack_delivery`."""
        self._check_open()
        _check_subscription(subscription)
        eid = normalize_execution_id(execution_id) or ""
        with self._lock:
            old = self._deliveries.get((subscription, eid), DeliveryCursor(subscription, eid))
            self._deliveries[(subscription, eid)] = DeliveryCursor(subscription, eid, max(old.delivered_seq, int(seq)))

    async def delivery_failed(self, subscription: str, execution_id: str, *, error: str, retry_at: datetime) -> None:
        """See :meth:`SqlOutbox.delivery_failed`."""
        self._check_open()
        _check_subscription(subscription)
        eid = normalize_execution_id(execution_id) or ""
        with self._lock:
            old = self._deliveries.get((subscription, eid), DeliveryCursor(subscription, eid))
            self._deliveries[(subscription, eid)] = dataclasses.replace(
                old, attempts=old.attempts + 1, next_attempt_at=as_utc(retry_at), last_error=error[:2000]
            )
