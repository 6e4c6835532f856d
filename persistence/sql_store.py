"""``SqlStore``: the durable :class:`~persistence.store.Store` on SQLAlchemy async (PostgreSQL or SQLite).

Every public method runs in one transaction on one pooled connection. Write
transactions are opened on an engine carrying :data:`persistence.engine.WRITE_OPTION`
(``BEGIN IMMEDIATE`` on SQLite; a plain ``BEGIN`` on PostgreSQL).

Fencing. An execution's ``owner_epoch`` is bumped by every :meth:`SqlStore.claim_execution`;
the caller keeps the returned epoch as its token. Every later write by that owner
(``write_checkpoint``, ``set_current_step``, ``finish_execution``) is an ``UPDATE ...
WHERE execution_id = :id AND owner_epoch = :epoch AND status IN ('queued', 'running')``;
when no row matches, the transaction is rolled back and the store raises
:class:`~dsl.errors.FencedError` (or :class:`~dsl.errors.ExecutionNotFoundError` if the row
does not exist at all).

The hot path, :meth:`SqlStore.write_checkpoint`, on SQLite is two statements in one
transaction: ``INSERT ... ON CONFLICT DO NOTHING`` of the checkpoint (first write wins),
then the fenced ``UPDATE`` of the execution, which appends the completed step key to
``completed_steps`` (``json_insert``) only when the checkpoint row was new and the key is
not already listed; then, when the checkpoint row was new, the attempt's outbox events
(:mod:`persistence.outbox`: the claim, the step's start, the checkpoint and the finish each
write their events in their own transaction). On PostgreSQL the same transaction is one
call of ``cortx_write_checkpoint`` (migration 0005) in autocommit, which takes the run's
row lock first; ``set_current_step``/``append_events`` and the admission pass are likewise
``cortx_append_events`` and ``cortx_admit``. The other statements are built once per store
(:meth:`SqlStore._prebuilt`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import String, bindparam, case, cast, exists, func, literal, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from dsl.errors import ExecutionNotFoundError, FencedError, PackConflictError
from persistence.admission import SqlAdmission
from persistence.engine import WRITE_OPTION, storable_text
from persistence.outbox import NewEvent, SqlOutbox, check_events, claim_event, finish_event, insert_events_in_transaction
from persistence.models import (
    EXECUTION_SECRETS,
    EXECUTIONS,
    PACKS,
    STEP_CHECKPOINTS,
    checkpoint_from_row,
    execution_from_row,
    json_type,
    pack_from_row,
)
from persistence.records import (
    ACTIVE_STATUSES,
    FINISH_STATUSES,
    MAX_PACK_ID,
    MAX_STEP_KEY,
    STATUS_QUEUED,
    STATUS_RUNNING,
    TERMINAL_STATUSES,
    ExecutionRecord,
    PackRecord,
    StepCheckpoint,
    as_utc,
    content_hash,
    utc_now,
)
from persistence.validation import (
    check_checkpoint,
    check_length,
    check_limit,
    check_new_execution,
    check_secret_inputs,
    check_new_pack,
    normalize_execution_id,
    plain_status,
    status_filter,
)

__all__ = ["SqlStore"]

_TS = EXECUTIONS.c.updated_at.type


def _ts(value: datetime) -> ColumnElement[Any]:
    """A timestamptz bind parameter (asyncpg refuses aware datetimes for plain ``timestamp``)."""
    return bindparam(None, value, type_=_TS)


#: One execution by id (bind parameter ``eid``), prebuilt (see ``SqlStore._prebuilt``).
_SELECT_ONE = select(EXECUTIONS).where(
    EXECUTIONS.c.execution_id == bindparam("eid", type_=EXECUTIONS.c.execution_id.type)
)


#: The checkpoint write on PostgreSQL: one call of the function of migration 0005, which
#: does what ``SqlStore.write_checkpoint`` does on SQLite in one round trip (1: checkpoint
#: new, 0: already written, -1: refused by fencing or no such run).
_WRITE_CHECKPOINT_FN = text(
    "SELECT cortx_write_checkpoint(:execution_id, :epoch, :step_key, :attempt, :step_id, :step_type, :status,"
    " :outputs, :error, :idempotency_key, :started_at, :ended_at, :node_id,"
    " :current_step, :completed_step, :context, :events, :now)"
).bindparams(
    bindparam("outputs", type_=JSONB(none_as_null=True)),
    bindparam("error", type_=JSONB(none_as_null=True)),
    bindparam("context", type_=JSONB(none_as_null=True)),
    bindparam("events", type_=JSONB(none_as_null=True)),
    bindparam("started_at", type_=_TS),
    bindparam("ended_at", type_=_TS),
    bindparam("now", type_=_TS),
)


#: A fenced write of progress and events on PostgreSQL (``cortx_append_events``, migration
#: 0005): the run's last ``seq`` after it, or -1 refused.
_APPEND_EVENTS_FN = text("SELECT cortx_append_events(:eid, :epoch, :current_step, :events, :now)").bindparams(
    bindparam("events", type_=JSONB(none_as_null=True)),
    bindparam("now", type_=_TS),
)


def _checkpoint_row(execution_id: str, checkpoint: StepCheckpoint) -> dict[str, Any]:
    """A checkpoint as ``step_checkpoints`` column values (also the checkpoint function's parameters)."""
    return {
        "execution_id": execution_id,
        "step_key": checkpoint.step_key,
        "attempt": checkpoint.attempt,
        "step_id": checkpoint.step_id,
        "step_type": checkpoint.step_type,
        "status": checkpoint.status,
        "outputs": checkpoint.outputs,
        "error": checkpoint.error,
        "idempotency_key": checkpoint.idempotency_key,
        "started_at": as_utc(checkpoint.started_at),
        "ended_at": as_utc(checkpoint.ended_at),
        "node_id": checkpoint.node_id,
    }


def _event_dicts(events: Sequence[NewEvent]) -> list[dict[str, Any]]:
    """Events as the JSON array the PostgreSQL functions of migration 0005 read."""
    return [{"type": e.type, "step_key": e.step_key, "attempt": e.attempt, "payload": e.payload} for e in events]


class _Refused(Exception):
    """Internal: a fenced UPDATE matched no row; the transaction must roll back."""


@contextmanager
def _plain_value_errors() -> Iterator[None]:
    """Re-raise a value SQLAlchemy could not bind (not JSON, NaN) as the original TypeError/ValueError.

    MemoryStore raises those directly; this keeps the two stores' errors alike.
    """
    try:
        yield
    except StatementError as exc:
        if not isinstance(exc, DBAPIError) and isinstance(exc.orig, TypeError | ValueError):
            raise exc.orig from None
        raise


class SqlStore(SqlAdmission, SqlOutbox):
    """Durable store on a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine`.

    Build it with :func:`persistence.store.open_store`, which also migrates the schema.

    Args:
        engine: an engine made by :func:`persistence.engine.create_engine_for`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._dialect = engine.dialect.name
        self._closed = False
        self._statements: dict[Hashable, Any] = {}
        # One-statement transactions (the 0005 functions, a new execution without secrets):
        # no BEGIN/COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for diagnostics and tests; do not write through it)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return self._dialect

    async def close(self) -> None:
        """Dispose of the connection pool. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._engine.dispose()

    async def __aenter__(self) -> SqlStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

    def _insert(self, table: Any) -> Any:
        return postgresql.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)

    def _prebuilt(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The statement ``build()`` makes, built once per store and ``key``.

        The hot path (new execution, checkpoint, current step, claim, finish) runs prebuilt statements
        with bind parameters by name: SQLAlchemy memoises a statement object's cache key,
        so a reused statement skips the traversal that a statement built per call pays on
        every execution (most of the host's CPU per step; docs/performance.md).
        """
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def _append_step(self) -> ColumnElement[Any]:
        """SQL for ``completed_steps`` with ``:p_completed_step`` appended unless already present."""
        col = EXECUTIONS.c.completed_steps
        step = bindparam("p_completed_step", type_=String)
        if self._dialect == "postgresql":
            one = func.jsonb_build_array(cast(step, String))
            return case((col.op("@>", is_comparison=True)(one), col), else_=col.op("||")(one))
        each = func.json_each(col).table_valued("value")
        present = exists(select(literal(1)).select_from(each).where(each.c.value == step))
        return case((present, col), else_=func.json_insert(col, "$[#]", step))

    async def _refuse(
        self, execution_id: str, given_id: str, owner_epoch: int, original: Exception | None = None
    ) -> NoReturn:
        """Raise NotFound if the row is gone, else FencedError (epoch lost or run terminal).

        With ``original`` (an integrity error), re-raise it instead of FencedError when the
        row exists: then the failure was not the missing parent row.
        """
        async with self._engine.connect() as conn:
            found = await conn.scalar(select(EXECUTIONS.c.owner_epoch).where(EXECUTIONS.c.execution_id == execution_id))
        if found is None:
            raise ExecutionNotFoundError(given_id)
        if original is not None:
            raise original
        raise FencedError(execution_id, owner_epoch)

    @staticmethod
    def _fenced() -> Any:
        """``UPDATE executions`` of the run ``:eid`` still owned at ``:epoch`` and not terminal."""
        return update(EXECUTIONS).where(
            EXECUTIONS.c.execution_id == bindparam("eid", type_=EXECUTIONS.c.execution_id.type),
            EXECUTIONS.c.owner_epoch == bindparam("epoch", type_=EXECUTIONS.c.owner_epoch.type),
            # literal values: an expanding IN of bound values is rendered again per execution
            EXECUTIONS.c.status.in_([literal(status) for status in sorted(ACTIVE_STATUSES)]),
        )

    # ------------------------------------------------------------------ packs

    async def save_pack(
        self, pack_id: str, version: str, document: dict, source_text: str | None = None
    ) -> PackRecord:
        """Store a pack version, idempotently. See :meth:`persistence.store.Store.save_pack`."""
        self._check_open()
        check_new_pack(pack_id, version, document, source_text)
        digest = content_hash(document)
        key = (PACKS.c.pack_id == pack_id) & (PACKS.c.version == version)
        async with self._writer.begin() as conn:
            await conn.execute(
                self._insert(PACKS)
                .values(
                    pack_id=pack_id,
                    version=version,
                    document=document,
                    source_text=source_text,
                    content_hash=digest,
                    deprecated=False,
                    created_at=_ts(utc_now()),
                )
                .on_conflict_do_nothing(index_elements=["pack_id", "version"])
            )
            row = (await conn.execute(select(PACKS).where(key))).mappings().one()
        if row["content_hash"] != digest:
            raise PackConflictError(pack_id, version)
        return pack_from_row(row)

    async def get_pack(self, pack_id: str, version: str) -> PackRecord | None:
        """The stored pack version, or ``None``."""
        self._check_open()
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(select(PACKS).where(PACKS.c.pack_id == pack_id, PACKS.c.version == version)))
                .mappings()
                .first()
            )
        return None if row is None else pack_from_row(row)

    async def list_packs(self) -> list[PackRecord]:
        """Every stored pack version, by pack id then creation time."""
        self._check_open()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(select(PACKS).order_by(PACKS.c.pack_id, PACKS.c.created_at, PACKS.c.version))
            ).mappings()
            return [pack_from_row(r) for r in rows]

    async def list_pack_versions(self, pack_id: str) -> list[PackRecord]:
        """Every version of one pack. See :meth:`persistence.store.Store.list_pack_versions`."""
        self._check_open()
        stmt = select(PACKS).where(PACKS.c.pack_id == pack_id).order_by(PACKS.c.created_at, PACKS.c.version)
        async with self._engine.connect() as conn:
            return [pack_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def deprecate_pack(self, pack_id: str, version: str, *, deprecated: bool = True) -> PackRecord | None:
        """Set a version's ``deprecated`` flag. See :meth:`persistence.store.Store.deprecate_pack`."""
        self._check_open()
        key = (PACKS.c.pack_id == pack_id) & (PACKS.c.version == version)
        async with self._writer.begin() as conn:
            await conn.execute(update(PACKS).where(key).values(deprecated=bool(deprecated)))
            row = (await conn.execute(select(PACKS).where(key))).mappings().first()
        return None if row is None else pack_from_row(row)

    # ------------------------------------------------------------------ executions

    async def create_execution(
        self,
        *,
        execution_id: str,
        workflow_pack_id: str,
        version: str,
        pack_document: dict,
        inputs: dict,
        options: dict,
        isolation: str = "shared",
        status: str = "running",
        secret_inputs: dict | None = None,
    ) -> ExecutionRecord:
        """Insert a new execution. See :meth:`persistence.store.Store.create_execution`."""
        self._check_open()
        status, isolation = plain_status(status), plain_status(isolation)  # type: ignore[assignment]
        eid = check_new_execution(
            execution_id, workflow_pack_id, version, pack_document, inputs, options, isolation, status
        )
        check_secret_inputs(secret_inputs)
        now = utc_now()
        row_values = {
            "execution_id": eid,
            "workflow_pack_id": workflow_pack_id,
            "version": version,
            "pack_document": pack_document,
            "status": status,
            "inputs": inputs,
            "options": options,
            "context": {},
            "isolation": isolation,
            "current_step": None,
            "completed_steps": [],
            "outputs": None,
            "error": None,
            "error_detail": None,
            "owner_epoch": 0,
            "created_at": now,
            "started_at": None if status == STATUS_QUEUED else now,
            "completed_at": None,
            "updated_at": now,
        }
        stmt = self._prebuilt("create", lambda: EXECUTIONS.insert().returning(*EXECUTIONS.c))
        secrets = [{"execution_id": eid, "name": str(k), "value": v} for k, v in (secret_inputs or {}).items()]
        try:
            with _plain_value_errors():
                # PostgreSQL, one statement (no secrets): autocommit spares BEGIN and COMMIT.
                # SQLite keeps its BEGIN IMMEDIATE transaction (no round trips to save).
                one_statement = self._dialect == "postgresql" and not secrets
                async with (self._autocommit.connect() if one_statement else self._writer.begin()) as conn:
                    row = (await conn.execute(stmt, row_values)).mappings().one()
                    if secrets:
                        await conn.execute(EXECUTION_SECRETS.insert(), secrets)
        except IntegrityError as exc:
            raise ValueError(f"execution {eid} already exists") from exc
        return execution_from_row(row)

    async def claim_execution(self, execution_id: str) -> ExecutionRecord:
        """Take ownership of a run. See :meth:`persistence.store.Store.claim_execution`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            raise ExecutionNotFoundError(execution_id)
        stmt = self._prebuilt(
            "claim",
            lambda: update(EXECUTIONS)
            .where(
                EXECUTIONS.c.execution_id == bindparam("eid", type_=EXECUTIONS.c.execution_id.type),
                EXECUTIONS.c.status == STATUS_RUNNING,
            )
            .values(
                owner_epoch=EXECUTIONS.c.owner_epoch + 1,
                status=STATUS_RUNNING,
                started_at=func.coalesce(EXECUTIONS.c.started_at, bindparam("p_now", type_=_TS)),
                updated_at=bindparam("p_now", type_=_TS),
            )
            .returning(*EXECUTIONS.c),
        )
        async with self._writer.begin() as conn:
            row = (await conn.execute(stmt, {"eid": eid, "p_now": utc_now()})).mappings().first()
            if row is None:
                row = (await conn.execute(_SELECT_ONE, {"eid": eid})).mappings().first()
            else:  # the outbox: the claim's event in the claim's transaction (persistence.outbox)
                await insert_events_in_transaction(conn, eid, [claim_event(int(row["owner_epoch"]))])
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        return execution_from_row(row)

    async def _write_checkpoint_pg(
        self,
        eid: str,
        checkpoint: StepCheckpoint,
        owner_epoch: int,
        current_step: str | None,
        completed_step: str | None,
        context: dict | None,
        events: list[NewEvent],
    ) -> bool:
        """:meth:`write_checkpoint` on PostgreSQL: one call of ``cortx_write_checkpoint`` (migration 0005)."""
        params = {
            **_checkpoint_row(eid, checkpoint),
            "epoch": owner_epoch,
            "current_step": current_step,
            "completed_step": completed_step,
            "context": context,
            "events": _event_dicts(events),
        }
        with _plain_value_errors():
            async with self._autocommit.connect() as conn:
                params["now"] = utc_now()  # after the pool's wait: the time of the write
                outcome = int((await conn.execute(_WRITE_CHECKPOINT_FN, params)).scalar_one())
        if outcome < 0:
            await self._refuse(eid, checkpoint.execution_id, owner_epoch)
        return outcome == 1

    async def _append_events_pg(
        self, eid: str, given_id: str, owner_epoch: int, current_step: str | None, events: list[NewEvent]
    ) -> list[int]:
        """A fenced write of ``updated_at`` (and ``current_step``) and ``events`` on PostgreSQL:
        one call of ``cortx_append_events`` (migration 0005). Returns the events' ``seq``.

        Raises:
            FencedError, ExecutionNotFoundError: as :meth:`set_current_step`.
        """
        params = {"eid": eid, "epoch": owner_epoch, "current_step": current_step,
                  "events": _event_dicts(events)}
        with _plain_value_errors():
            async with self._autocommit.connect() as conn:
                params["now"] = utc_now()  # after the pool's wait: the time of the write
                last = int((await conn.execute(_APPEND_EVENTS_FN, params)).scalar_one())
        if last < 0:
            await self._refuse(eid, given_id, owner_epoch)
        return list(range(last - len(events) + 1, last + 1))

    def _progress_update(self, current_step: bool, context: bool, append: bool) -> Any:
        """The checkpoint's fenced ``UPDATE`` of the run: ``updated_at`` and, when asked,
        ``current_step``, ``context`` and the appended ``completed_steps`` (bind
        parameters ``eid``, ``epoch``, ``p_updated_at``, ``p_current_step``, ``p_context``,
        ``p_completed_step``: not column names, which SQLAlchemy keeps for SET); one
        prebuilt statement per combination."""

        def build() -> Any:
            values: dict[str, Any] = {"updated_at": bindparam("p_updated_at", type_=_TS)}
            if current_step:
                values["current_step"] = bindparam("p_current_step", type_=EXECUTIONS.c.current_step.type)
            if context:
                values["context"] = bindparam("p_context", type_=json_type())
            if append:
                values["completed_steps"] = self._append_step()
            return self._fenced().values(**values)

        return self._prebuilt(("progress", current_step, context, append), build)

    async def write_checkpoint(
        self,
        checkpoint: StepCheckpoint,
        *,
        owner_epoch: int,
        current_step: str | None = None,
        completed_step: str | None = None,
        context: dict | None = None,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        """Record one step attempt, fenced. See :meth:`persistence.store.Store.write_checkpoint`."""
        self._check_open()
        eid = normalize_execution_id(checkpoint.execution_id)
        if eid is None:
            raise ExecutionNotFoundError(checkpoint.execution_id)
        checkpoint = check_checkpoint(checkpoint)
        check_length("current_step", current_step, MAX_STEP_KEY, required=False)
        check_length("completed_step", completed_step, MAX_STEP_KEY, required=False)
        if context is not None and not isinstance(context, dict):
            raise ValueError(f"context must be a dict or None, got {type(context).__name__}")
        new_events = check_events(events)
        if self._dialect == "postgresql":
            return await self._write_checkpoint_pg(eid, checkpoint, owner_epoch, current_step, completed_step,
                                                   context, new_events)
        insert = self._prebuilt(
            "checkpoint",
            lambda: self._insert(STEP_CHECKPOINTS).on_conflict_do_nothing(
                index_elements=["execution_id", "step_key", "attempt"]
            ),
        )
        row = _checkpoint_row(eid, checkpoint)
        params: dict[str, Any] = {"eid": eid, "epoch": owner_epoch, "p_updated_at": utc_now()}
        try:
            with _plain_value_errors():
                async with self._writer.begin() as conn:
                    inserted = (await conn.execute(insert, row)).rowcount == 1
                    append = inserted and completed_step is not None
                    progress = self._progress_update(current_step is not None, context is not None, append)
                    if current_step is not None:
                        params["p_current_step"] = current_step
                    if context is not None:
                        params["p_context"] = context
                    if append:
                        params["p_completed_step"] = completed_step
                    if (await conn.execute(progress, params)).rowcount != 1:
                        raise _Refused
                    if inserted and new_events:  # after the fenced UPDATE: its row lock orders the seqs
                        await insert_events_in_transaction(conn, eid, new_events)
        except _Refused:
            await self._refuse(eid, checkpoint.execution_id, owner_epoch)
        except IntegrityError as exc:
            # The only constraint the checks above cannot rule out: the execution's row is missing.
            await self._refuse(eid, checkpoint.execution_id, owner_epoch, original=exc)
        return inserted

    async def set_current_step(
        self, execution_id: str, *, owner_epoch: int, step_key: str, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record the step being worked on, fenced. See :meth:`persistence.store.Store.set_current_step`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            raise ExecutionNotFoundError(execution_id)
        check_length("step_key", step_key, MAX_STEP_KEY)
        new_events = check_events(events)
        if self._dialect == "postgresql":
            await self._append_events_pg(eid, execution_id, owner_epoch, step_key, new_events)
            return
        stmt = self._progress_update(True, False, False)
        params = {"eid": eid, "epoch": owner_epoch, "p_updated_at": utc_now(), "p_current_step": step_key}
        async with self._writer.begin() as conn:
            matched = (await conn.execute(stmt, params)).rowcount
            if matched == 1 and new_events:
                await insert_events_in_transaction(conn, eid, new_events)
        if matched != 1:
            await self._refuse(eid, execution_id, owner_epoch)

    async def finish_execution(
        self,
        execution_id: str,
        *,
        owner_epoch: int,
        status: str,
        outputs: dict | None = None,
        error: str | None = None,
        error_detail: dict | None = None,
    ) -> ExecutionRecord:
        """Move a run to a terminal status, fenced. See :meth:`persistence.store.Store.finish_execution`."""
        self._check_open()
        status = plain_status(status)  # type: ignore[assignment]
        if status not in FINISH_STATUSES:
            raise ValueError(f"finish status must be one of {sorted(FINISH_STATUSES)}, got {status!r}")
        eid = normalize_execution_id(execution_id)
        if eid is None:
            raise ExecutionNotFoundError(execution_id)
        stmt = self._prebuilt(
            "finish",
            lambda: self._fenced()
            .values(
                status=bindparam("p_status", type_=EXECUTIONS.c.status.type),
                outputs=bindparam("p_outputs", type_=json_type()),
                error=bindparam("p_error", type_=EXECUTIONS.c.error.type),
                error_detail=bindparam("p_error_detail", type_=json_type()),
                completed_at=bindparam("p_now", type_=_TS),
                updated_at=bindparam("p_now", type_=_TS),
            )
            .returning(*EXECUTIONS.c),
        )
        params = {
            "eid": eid, "epoch": owner_epoch, "p_status": status, "p_outputs": outputs,
            "p_error": storable_text(error),  # no NUL in a TEXT column (PostgreSQL refuses it)
            "p_error_detail": error_detail, "p_now": utc_now(),
        }
        with _plain_value_errors():
            async with self._writer.begin() as conn:
                row = (await conn.execute(stmt, params)).mappings().first()
                if row is None:
                    row = (await conn.execute(_SELECT_ONE, {"eid": eid})).mappings().first()
                else:  # the outbox: the final event in the final write's transaction
                    await insert_events_in_transaction(conn, eid, check_events([finish_event(status, error, error_detail)]))
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        if row["status"] not in TERMINAL_STATUSES:
            raise FencedError(eid, owner_epoch)
        return execution_from_row(row)

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """One execution. See :meth:`persistence.store.Store.get_execution`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            raise ExecutionNotFoundError(execution_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(_SELECT_ONE, {"eid": eid})).mappings().first()
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        return execution_from_row(row)

    async def load_checkpoints(self, execution_id: str) -> list[StepCheckpoint]:
        """Every checkpoint of a run. See :meth:`persistence.store.Store.load_checkpoints`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            return []
        t = STEP_CHECKPOINTS
        stmt = select(t).where(t.c.execution_id == eid).order_by(t.c.ended_at, t.c.step_key, t.c.attempt)
        async with self._engine.connect() as conn:
            return [checkpoint_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def load_secret_inputs(self, execution_id: str) -> dict:
        """A run's secret inputs. See :meth:`persistence.store.Store.load_secret_inputs`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            return {}
        t = EXECUTION_SECRETS
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(t.c.name, t.c.value).where(t.c.execution_id == eid))).all()
        return {name: value for name, value in rows}

    async def delete_secret_inputs(self, execution_id: str) -> None:
        """Erase a run's secret inputs. See :meth:`persistence.store.Store.delete_secret_inputs`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        if eid is None:
            return
        async with self._writer.begin() as conn:
            await conn.execute(EXECUTION_SECRETS.delete().where(EXECUTION_SECRETS.c.execution_id == eid))

    async def list_executions(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Executions, newest first. See :meth:`persistence.store.Store.list_executions`."""
        self._check_open()
        check_limit(limit)
        stmt = select(EXECUTIONS)
        if statuses is not None:
            wanted = sorted(status_filter(statuses) or (), key=str)
            if not wanted:
                return []
            stmt = stmt.where(EXECUTIONS.c.status.in_(wanted))
        stmt = stmt.order_by(EXECUTIONS.c.created_at.desc(), EXECUTIONS.c.execution_id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [execution_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    @staticmethod
    def _page_arguments(
        workflow_pack_id: object, created_after: object, created_before: object, after: object, limit: object
    ) -> bool:
        """Check :meth:`list_executions_page` arguments; False when the pack id can match no row."""
        check_limit(limit)
        for name, bound in (("created_after", created_after), ("created_before", created_before)):
            if bound is not None and not isinstance(bound, datetime):
                raise ValueError(f"{name} must be a datetime or None, got {type(bound).__name__}")
        if after is not None and not (
            isinstance(after, tuple) and len(after) == 2 and isinstance(after[0], datetime) and isinstance(after[1], str)
        ):
            raise ValueError(f"after must be a (datetime, str) pair or None, got {after!r}")
        if workflow_pack_id is None:
            return True
        if not isinstance(workflow_pack_id, str):
            raise ValueError(f"workflow_pack_id must be a str or None, got {type(workflow_pack_id).__name__}")
        if len(workflow_pack_id) > MAX_PACK_ID or "\x00" in workflow_pack_id:
            return False
        try:
            workflow_pack_id.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    async def list_executions_page(
        self,
        *,
        workflow_pack_id: str | None = None,
        statuses: Collection[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[ExecutionRecord]:
        """One keyset page of executions, newest first. See :meth:`persistence.store.Store.list_executions_page`."""
        self._check_open()
        if not self._page_arguments(workflow_pack_id, created_after, created_before, after, limit):
            return []
        c = EXECUTIONS.c
        stmt = select(EXECUTIONS)
        if workflow_pack_id is not None:
            stmt = stmt.where(c.workflow_pack_id == workflow_pack_id)
        if statuses is not None:
            wanted = sorted(status_filter(statuses) or (), key=str)
            if not wanted:
                return []
            stmt = stmt.where(c.status.in_(wanted))
        if created_after is not None:
            stmt = stmt.where(c.created_at >= _ts(as_utc(created_after)))
        if created_before is not None:
            stmt = stmt.where(c.created_at < _ts(as_utc(created_before)))
        if after is not None:
            at, execution_id = after
            position = tuple_(_ts(as_utc(at)), bindparam(None, execution_id, type_=String))
            stmt = stmt.where(tuple_(c.created_at, c.execution_id) < position)
        stmt = stmt.order_by(c.created_at.desc(), c.execution_id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [execution_from_row(r) for r in (await conn.execute(stmt)).mappings()]
