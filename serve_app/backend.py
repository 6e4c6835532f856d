"""What the HTTP handlers call: the store, the ExecutionHosts on Ray, and the run operations.

One :class:`Backend` per app (per uvicorn process or Serve replica). It opens its own
store on first use (``DATABASE_URL``; reads and pack writes) and talks to the same
ExecutionHosts as :class:`actors.driver.WorkflowClient` (``actors.host.get_host`` in the
configured Ray namespace), which write the executions and checkpoints.

Idempotent execute (FDD §3.1, ``Idempotency-Key``): the execution id of a keyed request
is ``uuid5(IDEMPOTENCY_NAMESPACE, "<principal>\\n<key>")`` (principal: ``anonymous`` or
``key:<fingerprint>`` of the API key), so the ``executions`` primary key *is* the
key → execution mapping: no extra table, no migration, atomic across replicas. A retry
finds the row and is answered with it (``replayed``); a concurrent duplicate loses the
insert race inside the host and is answered the same way. The same key with a different
pack, version, inputs or options raises :class:`IdempotencyKeyReusedError` (422). Keys do
not expire while the execution row exists.

Listing (:meth:`Backend.list_page`) pages the store by keyset (:mod:`persistence.listing`).
Events (:meth:`Backend.host_events`, :meth:`Backend.execution_events`) come from the run's
host when it holds them, looked up by name and never created for a read; otherwise they
are rebuilt from the checkpoints (:mod:`serve_app.events`).

Every Ray call is bounded by ``engine_timeout_s``; Ray failures become
:class:`EngineUnavailableError` (503), errors raised by a host (e.g. not found) are
re-raised as themselves.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import zlib
from datetime import datetime
from typing import Any

from actors.execution import status_record
from actors.host import store_submission
from actors.registry import ServiceRegistry
from actors.settings import Settings
from dsl.errors import InputValidationError, PackValidationError, WorkflowError
from dsl.models import WorkflowPack
from dsl.state import ExecutionStatus, is_terminal
from dsl.secrets import mask_secret_inputs
from dsl.task_spec import TaskPolicy
from dsl.validation import validate_document, validate_inputs
from persistence.listing import list_page
from persistence.packs import resolve_pack
from persistence.records import ExecutionRecord
from persistence.store import Store, open_store
from serve_app.errors import EngineUnavailableError, ExecutionFinishedError, IdempotencyKeyReusedError
from persistence.outbox import MAX_EVENTS_PER_READ
from serve_app.events import host_event, synthesize
from serve_app.listing import decode_cursor
from serve_app.schemas import ExecuteRequest

__all__ = ["IDEMPOTENCY_NAMESPACE", "Backend", "idempotent_execution_id"]

log = logging.getLogger("cortx.api")

#: uuid5 namespace of execution ids derived from Idempotency-Keys.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1d9c52-3a0b-5e8e-9c1f-2b7d4e8a9c10")
#: How often a cancel is re-sent while a just-submitted run has not started its task yet.
CANCEL_ATTEMPTS = 20


def idempotent_execution_id(principal: str, key: str) -> str:
    """The execution id a keyed execute request gets (stable per principal and key)."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{principal}\n{key}"))


class Backend:
    """Store + ExecutionHosts for one app.

    Args:
        settings: engine settings (database, hosts); persistence must be enabled.
        registry: the service registry packs are validated against and runs use.
        namespace: Ray namespace of the ExecutionHosts.
        engine_timeout_s: longest wait for one Ray call, in s.
    """

    def __init__(self, settings: Settings, registry: ServiceRegistry, namespace: str, engine_timeout_s: float) -> None:
        self.settings = settings
        self.registry = registry
        self.namespace = namespace
        self.engine_timeout_s = engine_timeout_s
        self._store: Store | None = None
        self._lock: asyncio.Lock | None = None
        self._hosts: dict[str, Any] = {}
        self._handovers: set[asyncio.Task[None]] = set()

    # --- plumbing -------------------------------------------------------------------------

    async def store(self) -> Store:
        """The app's store, opened (and migrated) on first use.

        Raises:
            ConfigurationError: the database cannot be reached (answered 503).
        """
        if self._store is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._store is None:
                    self._store = await open_store(self.settings.store_url, pool_size=min(self.settings.db_pool_size, 5))
        return self._store

    async def close(self) -> None:
        """Close the store. Idempotent."""
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    def _host_name(self, execution_id: str, isolation: str) -> str:
        from actors.host import dedicated_host_name, shared_host_name

        if isolation == "dedicated":
            return dedicated_host_name(execution_id)
        return shared_host_name(zlib.crc32(execution_id.encode()) % self.settings.execution_hosts)

    async def host(self, execution_id: str, isolation: str, *, fresh: bool = False) -> Any:
        """The Ray handle of the run's ExecutionHost (created if missing; shared ones cached)."""
        import ray

        if not ray.is_initialized():
            raise EngineUnavailableError("Ray is not connected")
        name = self._host_name(execution_id, isolation)
        if not fresh and name in self._hosts:
            return self._hosts[name]
        from actors.host import get_host

        async with asyncio.timeout(self.engine_timeout_s):
            handle = await asyncio.to_thread(
                get_host, self.settings, self.registry, execution_id=execution_id, isolation=isolation,
                namespace=self.namespace,
            )
        if isolation != "dedicated":
            self._hosts[name] = handle
        return handle

    async def call(self, execution_id: str, isolation: str, method: str, *args: Any) -> Any:
        """Call ``method`` of the run's host and await the answer (one retry on a dead handle).

        Raises:
            EngineUnavailableError: Ray or the host did not answer in time or is gone.
            WorkflowError: what the host raised (e.g. ExecutionNotFoundError).
            Exception: any other error the host raised (the caller decides).
        """
        import ray

        for attempt in (1, 2):
            handle = await self.host(execution_id, isolation, fresh=attempt == 2)
            ref = getattr(handle, method).remote(*args)
            try:
                async with asyncio.timeout(self.engine_timeout_s):
                    return await asyncio.wrap_future(ref.future())
            except TimeoutError:
                raise EngineUnavailableError(f"the ExecutionHost did not answer within {self.engine_timeout_s:g} s") from None
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            except ray.exceptions.RayActorError:
                self._hosts.pop(self._host_name(execution_id, isolation), None)
                if attempt == 2:
                    raise EngineUnavailableError("the ExecutionHost of this run is gone") from None
            except ray.exceptions.RayError as exc:
                raise EngineUnavailableError(f"Ray failed: {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    # --- runs -----------------------------------------------------------------------------

    async def execute(self, request: ExecuteRequest, principal: str, key: str | None) -> tuple[dict[str, Any], bool]:
        """Start a run (FDD §3.1); return its status record and whether it was a replay.

        Raises:
            PackNotFoundError, PackValidationError, InputValidationError,
            IdempotencyKeyReusedError, EngineUnavailableError.
        """
        store = await self.store()
        execution_id = idempotent_execution_id(principal, key) if key else str(uuid.uuid4())
        if key:
            replay = await self._replay(store, execution_id, request)
            if replay is not None:
                return replay, True
        record = await resolve_pack(store, request.workflow_pack_id, request.version)
        # Off the event loop (shared with Serve's health checks): a large pack's first
        # validation is CPU work of up to a second; later ones hit validate_document's cache.
        loaded = await asyncio.to_thread(
            validate_document,
            record.document, f"{record.pack_id}@{record.version}", services=self.registry.names(),
            tasks=TaskPolicy(self.settings.task_modules),  # registered names: checked when the step runs
        )
        inputs = validate_inputs(loaded.pack, request.inputs)
        isolation = request.options.isolation or loaded.pack.isolation
        submission = {
            "pack": record.document,
            "inputs": inputs,
            "options": request.engine_options(),
            "execution_id": execution_id,
            "isolation": isolation,
        }
        import ray

        if not ray.is_initialized():
            raise EngineUnavailableError("Ray is not connected")
        try:
            # Stored and admitted here, in the replica: the 202 never waits on a busy host.
            stored, admitted = await store_submission(store, self.settings, submission)
        except ValueError as exc:
            if "already exists" not in str(exc):
                raise
            # Keyed: a concurrent duplicate won the insert. Unkeyed: the id is this request's
            # own uuid4, so an earlier attempt of this very call (a retried Ray call) stored it.
            replay = await self._replay(store, execution_id, request)
            if replay is None:
                raise
            return replay, bool(key)
        for run in admitted:
            if run.execution_id == stored.execution_id:
                stored = run
        if stored.status == ExecutionStatus.QUEUED.value:
            # A concurrent execute's admission pass may have started it between our insert
            # and our own pass (which then found it no longer queued): answer what is stored.
            stored = await store.get_execution(stored.execution_id)
        self._hand_over(admitted)
        log.info("execution %s accepted: pack %s %s", execution_id, record.pack_id, record.version)
        answer = status_record(stored, self.settings)
        if answer["status"] != ExecutionStatus.QUEUED.value:
            # The answer is the admission's outcome (docs/api.md): a short run started by a
            # concurrent pass can have ended before this read; it was still started, not queued.
            answer["status"] = ExecutionStatus.RUNNING.value
        return answer, False

    def _hand_over(self, admitted: list[ExecutionRecord]) -> None:
        """Tell the owner host of each admitted run to start it; the 202 does not wait for it.

        In a background task, through :meth:`call` (a dead host is created again). A
        hand-over lost even so leaves the run ``running`` and unclaimed, and a supervisor
        pass of any shared host hands it over again (``actors.host.UNCLAIMED_AFTER_S``).
        """
        if not admitted:
            return

        async def hand_over() -> None:
            for run in admitted:
                try:
                    # call(): a cached handle of a host that died is looked up (and the host
                    # created) again, as every other call to a host does.
                    await self.call(run.execution_id, run.isolation, "resume", run.execution_id)
                except Exception:  # noqa: BLE001 - the supervisor hands it over again
                    log.warning("hand-over of execution %s failed; the supervisor retries", run.execution_id, exc_info=True)

        task = asyncio.get_running_loop().create_task(hand_over())
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _replay(self, store: Store, execution_id: str, request: ExecuteRequest) -> dict[str, Any] | None:
        """The existing run of a keyed request, None if there is none yet.

        Raises:
            IdempotencyKeyReusedError: the run was started by a different request.
        """
        try:
            existing = await store.get_execution(execution_id)
        except WorkflowError:
            return None
        if not _same_request(existing, request):
            raise IdempotencyKeyReusedError(execution_id)
        return existing.to_status_dict()

    async def status(self, execution_id: str) -> dict[str, Any]:
        """The FDD §3.2 status record. Raises ExecutionNotFoundError."""
        return (await (await self.store()).get_execution(execution_id)).to_status_dict()

    async def record(self, execution_id: str) -> ExecutionRecord:
        """The run's record. Raises ExecutionNotFoundError."""
        return await (await self.store()).get_execution(execution_id)

    async def list_page(
        self,
        *,
        workflow_pack_id: str | None,
        statuses: list[str] | None,
        created_after: datetime | None,
        created_before: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """One page of ``GET /v1/workflows/executions``: ``{"items": [...], "next_cursor": str | None}``.

        Raises:
            RequestValidationError: a malformed cursor (422 naming ``cursor``).
        """
        position = decode_cursor(cursor) if cursor is not None else None
        return await list_page(
            await self.store(),
            workflow_pack_id=workflow_pack_id,
            statuses=statuses,
            created_after=created_after,
            created_before=created_before,
            after=position,
            limit=limit,
        )

    async def _existing_host(self, execution_id: str, isolation: str) -> Any | None:
        """The run's ExecutionHost if it exists now (never creates one), else None."""
        import ray

        if not ray.is_initialized():
            return None
        name = self._host_name(execution_id, isolation)
        if name in self._hosts:
            return self._hosts[name]
        try:
            async with asyncio.timeout(self.engine_timeout_s):
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
        except ValueError:
            return None
        except TimeoutError:
            raise EngineUnavailableError(f"Ray did not answer within {self.engine_timeout_s:g} s") from None
        if isolation != "dedicated":
            self._hosts[name] = handle
        return handle

    async def _host_events_call(
        self, handle: Any, execution_id: str, isolation: str, after: int, timeout_s: float
    ) -> dict[str, Any] | None:
        import ray

        ref = handle.events.remote(execution_id, after, timeout_s)
        try:
            async with asyncio.timeout(self.engine_timeout_s + timeout_s):
                return await asyncio.wrap_future(ref.future())
        except TimeoutError:
            raise EngineUnavailableError(f"the ExecutionHost did not answer within {self.engine_timeout_s:g} s") from None
        except ray.exceptions.RayActorError:
            self._hosts.pop(self._host_name(execution_id, isolation), None)
            return None
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            raise EngineUnavailableError(f"Ray failed: {type(exc).__name__}") from None

    async def host_events(self, execution_id: str, isolation: str, after: int, timeout_s: float) -> dict[str, Any] | None:
        """``{"events", "done"}`` of the host that holds the run (long-polling ``timeout_s``), or None.

        None: no host holds the run's events (no such host, the host is gone, or it never
        ran or no longer remembers the run); the caller falls back to the checkpoints.

        Raises:
            EngineUnavailableError: Ray or the host did not answer in time.
        """
        for _ in range(2):  # a cached handle of a host that died: look the host up once more
            handle = await self._existing_host(execution_id, isolation)
            if handle is None:
                return None
            result = await self._host_events_call(handle, execution_id, isolation, after, timeout_s)
            if result is not None:
                break
        if result is None or result["events"] or not result["done"]:
            return result
        # "done" with nothing new: either the caller has every event of a run the host holds,
        # or the host does not hold the run at all (it answers the same). Event ``after`` tells.
        if after <= 0:
            return None
        probe = await self._host_events_call(handle, execution_id, isolation, after - 1, 0.0)
        return result if probe and probe["events"] else None

    async def execution_events(self, execution_id: str, after: int) -> dict[str, Any]:
        """``GET .../events``: the run's events with ``seq > after`` (serve_app.events: host or checkpoints).

        Raises:
            ExecutionNotFoundError, EngineUnavailableError.
        """
        record = await self.record(execution_id)
        stored = await self.stored_events(record.execution_id, after)
        if stored is None:
            live = await self.host_events(record.execution_id, record.isolation, after, 0.0)
            if live is not None and live["events"]:
                # The host's first event comes after its claim committed the run's first
                # outbox event: a run claimed between the two reads has its outbox now.
                stored = await self.stored_events(record.execution_id, after)
        if stored is not None:  # the outbox (persistence.outbox): durable, seq gap-free across restarts
            events, more = stored[:MAX_EVENTS_PER_READ], len(stored) > MAX_EVENTS_PER_READ
            return {"execution_id": record.execution_id, "status": record.status, "source": "outbox",
                    "done": record.is_terminal and not more, "more": more, "events": events}
        if live is not None and live["done"] and not record.is_terminal:
            record = await self.record(execution_id)  # it ended since it was read
        if live is not None and (live["done"] or not record.is_terminal):
            events = [host_event(e) for e in live["events"]]
            source, done = "host", bool(live["done"])
        else:
            checkpoints = await (await self.store()).load_checkpoints(record.execution_id)
            events = [e for e in synthesize(record, checkpoints) if e["seq"] > after]
            source, done = "checkpoints", record.is_terminal
        return {"execution_id": record.execution_id, "status": record.status, "source": source, "done": done,
                "events": events}

    async def stored_events(self, execution_id: str, after: int) -> list[dict[str, Any]] | None:
        """The run's outbox events with ``seq > after`` (API form, at most ``MAX_EVENTS_PER_READ + 1``).

        None when the run has no stored event at all (it has not started, it ran before the
        outbox existed, or persistence is off): then the host or the checkpoints speak for it.
        """
        store = await self.store()
        events = await store.load_events(execution_id, after, MAX_EVENTS_PER_READ + 1)
        if events:
            return [e.to_dict() for e in events]
        if after > 0 and await store.load_events(execution_id, 0, 1):
            return []
        return None

    async def record_and_checkpoints(self, execution_id: str) -> tuple[ExecutionRecord, list[Any]]:
        """The run's record and its step checkpoints. Raises ExecutionNotFoundError."""
        store = await self.store()
        record = await store.get_execution(execution_id)
        return record, await store.load_checkpoints(record.execution_id)

    async def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel a run (FDD §3.3); return its record once it has stopped.

        A run already ``cancelled`` is answered with its unchanged record (a retried cancel
        is safe); one that ended ``completed`` or ``failed`` raises ExecutionFinishedError.
        A run hosted nowhere (the cluster restarted and it was not resumed) is hosted
        again first, then cancelled.

        Raises:
            ExecutionNotFoundError, ExecutionFinishedError, EngineUnavailableError.
        """
        store = await self.store()
        record = await store.get_execution(execution_id)
        eid, isolation = record.execution_id, record.isolation
        current = record.to_status_dict()
        resumed = False
        for _ in range(CANCEL_ATTEMPTS):
            if is_terminal(current["status"]):
                break
            current = await self.call(eid, isolation, "cancel", eid)
            if is_terminal(current["status"]):
                break
            if not resumed:
                # Not hosted (or its task not started yet): make sure a host owns it.
                resumed = True
                await self.call(eid, isolation, "resume", eid)
            await asyncio.sleep(0.1)
        if current["status"] == ExecutionStatus.CANCELLED.value:
            return current
        if is_terminal(current["status"]):
            raise ExecutionFinishedError(eid, current["status"])
        raise EngineUnavailableError(f"execution {eid} did not stop; try again")

    async def queue_depth(self) -> dict[str, int]:
        """``{"max_concurrent_executions", "running", "queued"}`` of the deployment (FDD §9.2, §10)."""
        counts = await (await self.store()).count_by_status(("running", "queued"))
        return {"max_concurrent_executions": self.settings.max_concurrent_executions, **counts}

    # --- health ---------------------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        """``{"database": "ok"|reason, "ray": "ok"|reason}`` (no secrets in the reasons)."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(10):
                store = await self.store()
            async with asyncio.timeout(5):
                await store.list_executions(limit=1)
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness: database check failed: %s", exc)
            checks["database"] = f"unreachable ({type(exc).__name__})"
        try:
            import ray

            if not ray.is_initialized():
                checks["ray"] = "not connected"
            else:
                async with asyncio.timeout(5):
                    await asyncio.to_thread(ray.cluster_resources)
                checks["ray"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["ray"] = f"unreachable ({type(exc).__name__})"
        return checks


def _same_request(existing: ExecutionRecord, request: ExecuteRequest) -> bool:
    """Whether ``request`` is the request that started ``existing`` (same key ⇒ same body)."""
    if existing.workflow_pack_id != request.workflow_pack_id:
        return False
    if request.version is not None and request.version != existing.version:
        return False
    if request.options.isolation is not None and request.options.isolation != existing.isolation:
        return False
    if request.engine_options() != existing.options:
        return False
    try:
        pack = WorkflowPack.model_validate(existing.pack_document)
        inputs = validate_inputs(pack, request.inputs)
    except (InputValidationError, PackValidationError, ValueError):
        return False
    # Stored inputs hold "***" for secret inputs (docs/security.md): compare them that way.
    return mask_secret_inputs(pack.input_schema(), inputs) == existing.inputs
