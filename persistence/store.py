"""The ``Store`` contract, its two implementations, and :func:`open_store`.

* :class:`Store` — the Protocol the rest of the service codes against.
* :class:`~persistence.sql_store.SqlStore` — durable, on PostgreSQL (``asyncpg``) or SQLite
  (``aiosqlite``), schema managed by Alembic.
* :class:`~persistence.memory_store.MemoryStore` — the same behaviour in process memory,
  for when persistence is switched off; nothing survives the process.

Ownership and fencing: a worker that takes over a run calls :meth:`Store.claim_execution`
and keeps the returned ``owner_epoch``; every later write passes it back. A write with an
epoch older than the current one (the run was claimed again elsewhere) or against a
terminal run raises :class:`~dsl.errors.FencedError` and changes nothing.

Example::

    store = await open_store("sqlite+aiosqlite:///var/cortx/cortx.db")
    run = await store.create_execution(execution_id=str(uuid.uuid4()), workflow_pack_id="p",
                                       version="1.0.0", pack_document=doc, inputs={}, options={},
                                       status="queued")
    run = await store.claim_execution(run.execution_id)           # owner_epoch == 1
    await store.write_checkpoint(cp, owner_epoch=run.owner_epoch, completed_step=cp.step_key)
    await store.finish_execution(run.execution_id, owner_epoch=run.owner_epoch,
                                 status="completed", outputs={...})
    await store.close()
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

from dsl.errors import ConfigurationError
from persistence.engine import SETTING, check_schema, create_engine_for, normalize_url, probe, run_migrations
from persistence.memory_store import MemoryStore
from persistence.outbox import DeliveryCursor, EventHead, NewEvent, StoredEvent
from persistence.records import ExecutionRecord, PackRecord, StepCheckpoint
from persistence.sql_store import SqlStore

__all__ = ["MEMORY_URL", "MemoryStore", "SqlStore", "Store", "is_transient_error", "open_store"]

#: The URL that selects :class:`MemoryStore`.
MEMORY_URL = "memory://"


@runtime_checkable
class Store(Protocol):
    """Persistence of packs, executions and step checkpoints. Every method is a coroutine.

    Unless stated, methods raise ``ValueError`` for arguments the schema cannot hold
    (empty or over-long strings, unknown statuses, non-dict documents, NaN),
    ``TypeError`` for values JSON cannot represent, and ``RuntimeError`` after
    :meth:`close`. Statuses may be given as plain strings or str-valued enums (e.g.
    ``dsl.state.ExecutionStatus``); records always carry plain strings.
    """

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    async def save_pack(
        self, pack_id: str, version: str, document: dict, source_text: str | None = None
    ) -> PackRecord:
        """Store an immutable pack version.

        Args:
            pack_id: at most 200 characters.
            version: at most 64 characters.
            document: the validated pack (JSON object).
            source_text: the YAML/JSON text it came from, if any.

        Returns:
            The stored record. Saving the same (pack_id, version) with a document of the
            same canonical-JSON SHA-256 returns the existing record unchanged (its
            ``created_at`` and ``source_text`` are the first save's).

        Raises:
            PackConflictError: the version exists with a different document.
        """
        ...

    async def get_pack(self, pack_id: str, version: str) -> PackRecord | None:
        """The stored pack version, or ``None`` if there is none."""
        ...

    async def list_packs(self) -> list[PackRecord]:
        """Every stored pack version, ordered by pack id, then creation time."""
        ...

    async def list_pack_versions(self, pack_id: str) -> list[PackRecord]:
        """Every stored version of one pack, ordered by creation time, then version; ``[]`` if none."""
        ...

    async def deprecate_pack(self, pack_id: str, version: str, *, deprecated: bool = True) -> PackRecord | None:
        """Mark a pack version deprecated (or, with ``deprecated=False``, not deprecated).

        Only the flag changes: the document stays immutable. Idempotent.

        Returns:
            The updated record, or ``None`` if the version does not exist.
        """
        ...

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
        """Insert a new execution with ``owner_epoch`` 0, empty context and no steps done.

        Args:
            execution_id: a uuid string (stored in canonical lowercase form).
            workflow_pack_id: the pack's id.
            version: the pack's version.
            pack_document: the exact pack snapshot the run uses (needed to resume).
            inputs: validated run inputs.
            options: run options.
            isolation: ``shared`` or ``dedicated``.
            status: ``queued`` (``started_at`` stays ``None``) or ``running`` (``started_at`` = now).
            secret_inputs: values of the run's ``secret: true`` inputs (``inputs`` holds
                ``"***"`` for them), written to the secret store in the same transaction.

        Raises:
            ValueError: a malformed id, an id that already exists, or a bad argument.
        """
        ...

    async def claim_execution(self, execution_id: str) -> ExecutionRecord:
        """Atomically take ownership of a ``running`` run.

        Increments ``owner_epoch`` and sets ``started_at`` (if unset). The returned
        ``owner_epoch`` is the caller's fencing token. A ``queued`` run (not admitted yet,
        see :mod:`persistence.admission`) or a terminal one is returned unchanged (no epoch
        bump): check ``record.status``.

        Raises:
            ExecutionNotFoundError: no such execution (or a malformed id).
        """
        ...

    async def admit_queued(self, max_running: int) -> list[ExecutionRecord]:
        """Admit the oldest ``queued`` runs while fewer than ``max_running`` run (FDD §9.2).

        See :meth:`persistence.admission.SqlAdmission.admit_queued`.
        """
        ...

    async def cancel_queued(self, execution_id: str) -> ExecutionRecord | None:
        """Cancel a run still ``queued``; ``None`` when it was not queued."""
        ...

    async def count_by_status(self, statuses: Collection[str] = ("queued", "running")) -> dict[str, int]:
        """``{status: count}`` for each of ``statuses`` (queue depth and running runs)."""
        ...

    async def unclaimed_running(self, older_than_s: float) -> list[tuple[str, str]]:
        """``[(execution_id, isolation)]`` of runs admitted ``older_than_s`` s ago, never claimed."""
        ...

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
        """Record one step attempt and advance the run, in one transaction.

        The checkpoint's (execution_id, step_key, attempt) is written once: the first
        write wins and later writes of the same key change neither the checkpoint nor
        ``completed_steps``. The run's ``updated_at`` is always bumped; ``current_step``
        and ``context`` are replaced when given; ``completed_step`` is appended to
        ``completed_steps`` when the checkpoint was new and the key is not listed yet.

        Args:
            checkpoint: the attempt's result (aware datetimes).
            owner_epoch: the caller's fencing token from :meth:`claim_execution`.
            current_step: new ``current_step``, if any.
            completed_step: step key to append to ``completed_steps``, if any.
            context: new saved evaluation context, if any.
            events: outbox events of this attempt (``step.completed``...), written in the
                same transaction, numbered after the run's last event, and only when the
                checkpoint row is new (:mod:`persistence.outbox`).

        Returns:
            ``True`` if the checkpoint row was inserted, ``False`` if it existed already.

        Raises:
            FencedError: ``owner_epoch`` is not the run's current epoch, or the run is
                terminal; nothing was written.
            ExecutionNotFoundError: no such execution.
        """
        ...

    async def set_current_step(
        self, execution_id: str, *, owner_epoch: int, step_key: str, events: Sequence[NewEvent] = ()
    ) -> None:
        """Set ``current_step`` (fenced like :meth:`write_checkpoint`), with ``events`` (``step.started``) in the same transaction.

        Raises:
            FencedError: stale epoch or terminal run.
            ExecutionNotFoundError: no such execution.
        """
        ...

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
        """Move an active run to ``completed``, ``failed`` or ``cancelled``; sets ``completed_at``.

        A run that is already terminal is returned unchanged (a second finish is a no-op,
        whatever the epoch).

        Args:
            execution_id: the run.
            owner_epoch: the caller's fencing token.
            status: the terminal status.
            outputs: workflow outputs (for ``completed``).
            error: one-line message (for ``failed``/``cancelled``).
            error_detail: structured error, e.g. ``{"step", "kind", "message", "attempts"}``.

        Raises:
            FencedError: the run is active and ``owner_epoch`` is stale.
            ExecutionNotFoundError: no such execution.
        """
        ...

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """One execution.

        Raises:
            ExecutionNotFoundError: no such execution, including any id that is not a uuid.
        """
        ...

    async def load_checkpoints(self, execution_id: str) -> list[StepCheckpoint]:
        """A run's checkpoints ordered by ``ended_at``, ``step_key``, ``attempt``; ``[]`` if none (or no such run)."""
        ...

    async def load_secret_inputs(self, execution_id: str) -> dict:
        """The run's secret input values, ``{name: value}``; ``{}`` if none, erased or no such run.

        Only the run's owner calls this, to build the run's scheduler (``docs/security.md``).
        """
        ...

    async def delete_secret_inputs(self, execution_id: str) -> None:
        """Erase the run's secret input values (the run ended: they are not needed again)."""
        ...

    # The event outbox and delivery cursors (persistence.outbox, docs/events.md). Claims,
    # finishes and ``cancel_queued`` write their own ``execution.*`` event in their transaction.

    async def append_events(self, execution_id: str, *, owner_epoch: int, events: Sequence[NewEvent]) -> list[int]:
        """Write events without another state change, fenced. See :meth:`persistence.outbox.SqlOutbox.append_events`."""
        ...

    async def load_events(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """A run's stored events with ``seq > after``, by ``seq``; ``[]`` if none."""
        ...

    async def recent_event_heads(self, since: datetime | None) -> list[EventHead]:
        """Runs with events written since ``since`` (all when None) and their last ``seq``."""
        ...

    async def delivery_cursors(self, subscription: str, execution_ids: Collection[str]) -> dict[str, DeliveryCursor]:
        """The delivery cursors of ``subscription`` for those runs."""
        ...

    async def ack_delivery(self, subscription: str, execution_id: str, seq: int) -> None:
        """``subscription`` delivered the run's events up to ``seq``."""
        ...

    async def delivery_failed(self, subscription: str, execution_id: str, *, error: str, retry_at: datetime) -> None:
        """A delivery attempt of the run's next event failed; try again at ``retry_at``."""
        ...

    async def list_executions(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Up to ``limit`` (>= 1) executions, newest ``created_at`` first, optionally filtered by status."""
        ...

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
        """One page of executions for keyset pagination, newest first.

        Rows are ordered by ``(created_at, execution_id)`` descending, a total order, so
        a page never repeats or skips a row of the previous one, whatever is inserted
        meanwhile. On SQL the keyset condition is the row-value comparison
        ``(created_at, execution_id) < (:at, :id)``.

        Args:
            workflow_pack_id: only this pack's runs; an id no pack can have (NUL, an
                unpaired surrogate, over 200 characters) matches nothing.
            statuses: only runs in one of these statuses (empty: nothing).
            created_after: only runs created at or after this instant (inclusive).
            created_before: only runs created before this instant (exclusive).
            after: ``(created_at, execution_id)`` of the last row of the previous page;
                only rows that come after it in this order are returned.
            limit: at most this many rows (>= 1); ask for one more than a page to know
                whether another page follows.

        Naive datetimes are taken as UTC.

        Raises:
            ValueError: ``limit`` is not an int >= 1, a bound is not a datetime, or
                ``after`` is not a ``(datetime, str)`` pair.
        """
        ...


#: SQLSTATE codes that mean "the server went away or is not taking connections yet":
#: class 08 (connection exception) by prefix, plus admin/crash shutdown, "cannot connect
#: now" (starting up or shutting down) and too many connections.
_TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
_TRANSIENT_NAMES: Final = (
    "ConnectionDoesNotExist",
    "CannotConnectNow",
    "AdminShutdown",
    "CrashShutdown",
    "InternalClientError",
    "TooManyConnections",
)


def is_transient_error(exc: BaseException) -> bool:
    """True when ``exc`` means the database was unreachable or the connection was lost.

    Such a write may succeed if tried again (the server restarts, SQLite's lock frees); any
    other error (a value the database refuses, a constraint) will fail the same way again.

    The whole cause chain is examined (``exc``, the driver error SQLAlchemy wraps in
    ``.orig``, and their ``__cause__``): SQLAlchemy's asyncpg adapter turns e.g. asyncpg's
    ``CannotConnectNowError`` ("the database system is shutting down") into a generic
    ``Error`` whose cause is the real one.
    """
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen or len(seen) > 16:
            continue
        seen.add(id(link))
        if isinstance(link, (ConnectionError, TimeoutError, OSError)):
            return True
        if isinstance(link, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
            return True
        if isinstance(link, sa_exc.DBAPIError):
            if link.connection_invalidated or isinstance(link, (sa_exc.OperationalError, sa_exc.InterfaceError)):
                return True
            pending.append(link.orig)
        sqlstate = str(getattr(link, "sqlstate", "") or "")
        if sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES:
            return True
        name = type(link).__name__
        if name == "InterfaceError" or any(word in name for word in _TRANSIENT_NAMES):
            return True
        pending.append(link.__cause__)
    return False


async def open_store(url: str, *, migrate: bool = True, pool_size: int = 5) -> Store:
    """Open the store selected by ``url``.

    Args:
        url: ``postgresql+asyncpg://user:pw@host:port/db`` (or ``postgresql://``),
            ``sqlite+aiosqlite:///path/to/file.db`` (or ``sqlite:///``; the folder is
            created), or ``memory://`` for the non-durable :class:`MemoryStore`.
        migrate: run Alembic ``upgrade head`` first (safe when several processes start
            at once). When false, the schema must already be at head.
        pool_size: PostgreSQL connections kept open (SQLite always uses one).

    Returns:
        A :class:`SqlStore` or :class:`MemoryStore`; call ``close()`` when done.

    Raises:
        ConfigurationError: (name ``DATABASE_URL``, password masked) an unsupported URL,
            an unreachable database (the rule carries the driver's reason), a failed
            migration, or (``migrate=False``) a schema not at head.
    """
    if isinstance(url, str) and url.strip() == MEMORY_URL:
        return MemoryStore()
    engine = create_engine_for(normalize_url(url), pool_size=pool_size)
    try:
        await probe(engine)
        if migrate:
            await run_migrations(engine)
        else:
            await check_schema(engine)
    except ConfigurationError:
        await engine.dispose()
        raise
    except Exception as exc:
        await engine.dispose()
        masked = engine.url.render_as_string(hide_password=True)
        raise ConfigurationError(SETTING, masked, f"cannot open the store: {type(exc).__name__}: {exc}") from exc
    return SqlStore(engine)
