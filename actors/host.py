"""ExecutionHosts: long-lived async Ray actors, each hosting many ExecutionActors.

A Ray actor process per run costs about 470 ms to start and 48 MB (measured on the
development machine, ``docs/architecture.md``), so runs share hosts: ``cortx-host-<n>``,
``CORTX_EXECUTION_HOSTS`` of them, a run placed on one by a hash of its id. A run (or
pack) with ``isolation: dedicated`` gets a host of its own, named
``cortx-dedicated-<execution_id>``, which exits when its run ends.

The host hands each step attempt to remote workers and awaits it without blocking its
event loop: a ``service_call``, ``http`` or ``webhook`` attempt is the Ray task
:func:`actors.tasks.service_call_task` (or, opt-in with ``CORTX_SERVICE_CALLERS``, a call
to a service caller a shared host owns, :mod:`actors.callers`), a ``task`` attempt a Ray
task with its resources. An attempt is cancelled (``ray.cancel``) when the run is
cancelled, its step times out or a sibling fails.

Hosts are detached (they outlive the process that created them) and created with
``max_restarts=-1``: Ray restarts a host whose process died.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
import zlib
from collections import OrderedDict
from typing import Any

import ray

from actors import metrics
from actors.callers import start_callers
from actors.execution import ExecutionActor, status_record
from actors.logs import configure_json_logging
from actors.registry import ServiceRegistry
from actors.scheduler import ServiceRequest
from actors.settings import Settings
from actors.task_step import TaskRequest, step_task_name
from actors.tasks import service_call_task, task_step_task
from dsl.errors import FencedError
from dsl.models import WorkflowPack
from dsl.secrets import split_secret_inputs
from dsl.state import ExecutionStatus, is_terminal
from persistence.store import Store, open_store

__all__ = ["ExecutionHost", "RayStepRunner", "dedicated_host_name", "get_host", "shared_host_name", "store_submission"]

log = logging.getLogger("cortx.host")

#: Seconds between a host's admission passes (queued runs let in, unclaimed ones handed over).
ADMISSION_POLL_S = 1.0
#: A run admitted this many s ago that no host has claimed is handed over again by its owner.
UNCLAIMED_AFTER_S = 5.0
#: ... and after this many s by every shared host (its owner host may be gone).
ORPHANED_AFTER_S = 2 * UNCLAIMED_AFTER_S

#: Longest wait of :meth:`ExecutionHost.ready` for the host's service callers to be up, in s.
CALLERS_READY_S = 60.0

#: A dedicated host exits this many s after its run ended (``wait`` may still ask it).
DEDICATED_EXIT_AFTER_S = 30.0
#: ... and this many s after it finds it has no run to host: its run was cancelled while
#: queued, or Ray restarted it after its run had ended (nothing to wait on).
IDLE_EXIT_AFTER_S = 1.0

#: Finished runs kept in memory per host for ``wait`` and live events after a run ended
#: (older ones are read from the database). Each holds its run's journal: a shared host grew
#: about 50 MB per 340 finished runs, so 10,000 would cost about 1.5 GB.
FINISHED_KEPT = 1_000


def shared_host_name(index: int) -> str:
    """Ray actor name of shared host ``index``."""
    return f"cortx-host-{index}"


def dedicated_host_name(execution_id: str) -> str:
    """Ray actor name of the dedicated host of ``execution_id``."""
    return f"cortx-dedicated-{execution_id}"


class RayStepRunner:
    """Runs step work remotely in Ray (the :class:`~actors.scheduler.StepRunner` of a host).

    Service calls go to service caller actors (:mod:`actors.callers`) when ``callers`` is
    above 0, else each is a Ray task; ``task`` steps are always Ray tasks.

    Args:
        num_cpus: CPUs Ray reserves per step task (a fraction: the work is mostly I/O).
        secrets_file: where callers and step tasks read named secrets (``Settings.secrets_file``).
        task_modules: the ``task`` step allowlist, checked again in the worker.
        namespace: the deployment's Ray namespace, where drivers register task functions.
        callers: service caller actors this runner starts (:meth:`start_callers`, or its
            first service call) and sends service calls to, in turn (:mod:`actors.callers`);
            0 sends each call as a Ray task instead.
        caller_concurrency: calls each caller runs at once.
    """

    def __init__(
        self,
        num_cpus: float,
        secrets_file: str | None = None,
        task_modules: tuple[str, ...] = (),
        namespace: str | None = None,
        callers: int = 0,
        caller_concurrency: int = 64,
    ) -> None:
        self._num_cpus = num_cpus
        self._secrets_file = secrets_file
        self._task_modules = task_modules
        self._namespace = namespace
        self._caller_count = callers
        self._caller_concurrency = caller_concurrency
        self._callers: list[Any] = []
        self._turn = 0

    @property
    def callers(self) -> list[Any]:
        """The Ray handles of the service callers (empty until :meth:`start_callers`)."""
        return list(self._callers)

    def start_callers(self) -> None:
        """Start the service callers now, if this runner has any and they are not started.

        A shared host calls it when it is created, so a caller's process start (about a
        second) is not paid inside its first service call's duration and timeout.
        """
        if self._caller_count and not self._callers:
            self._callers = start_callers(self._caller_count, self._caller_concurrency)

    async def call_service(self, request: ServiceRequest) -> dict[str, Any]:
        """Send one service call attempt to the next caller (or submit it as a Ray task); await it.

        Returns:
            The :func:`actors.http_call.call_http` result with the ``node_id`` of the node
            it ran on; a caller or task that died (process killed, node lost) is reported
            as a retryable ``task_error`` (``step task failed: WorkerCrashedError``, ``service
            caller failed: ActorUnavailableError``) without a ``node_id``.
        """
        if self._caller_count:
            self.start_callers()
            caller = self._callers[self._turn % len(self._callers)]
            self._turn += 1
            ref = caller.call.remote(request.call_kwargs(), self._secrets_file, request.webhook)
            return await _await_step_task(ref, "service caller failed", actor_call=True)
        ref = service_call_task.options(
            name=step_task_name(request.step_key),
            num_cpus=self._num_cpus,
        ).remote(request.call_kwargs(), self._secrets_file, request.webhook)
        return await _await_step_task(ref, "step task failed")

    async def run_task(self, request: TaskRequest) -> dict[str, Any]:
        """Submit one ``task`` step attempt as a Ray task with its resources, and await it.

        A registered function is fetched (pickled) from the namespace's task registry and
        travels with the task (``actors.task_registry``).

        Returns:
            :func:`actors.task_step.perform_task`'s outcome with ``node_id``; a task that
            died is a retryable ``task_error``, as for :meth:`call_service`.
        """
        from actors import task_registry

        pickled = await task_registry.fetch(request.function, self._namespace) if request.registered else None
        ref = task_step_task.options(**request.ray_options()).remote(
            request.function, request.kwargs, self._task_modules, pickled
        )
        return await _await_step_task(ref, f"the task of function {request.function!r} failed")


async def store_submission(store: Store, settings: Settings, request: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Store a new execution ``queued`` and run one admission pass (FDD §3.1, §9.2).

    The one write path of a new run, shared by :meth:`ExecutionHost.submit` (driver API)
    and the HTTP API's execute (which does it in the Serve replica, so that answering 202
    never waits on a busy host). The caller hands each admitted run over to its owner host
    (``resume``); a hand-over that is lost is redone by a supervisor pass
    (``UNCLAIMED_AFTER_S``).

    Args:
        store: an open store.
        settings: engine settings (``max_concurrent_executions``).
        request: ``{"pack": <pack document>, "inputs": {...}, "options": {...},
            "execution_id": optional str, "isolation": "shared"|"dedicated"}``; the pack
            and inputs are validated by the caller.

    Returns:
        ``(record, admitted)``: the stored record (status ``queued``) and the records of
        every run this pass admitted (status ``running``; the new run among them if a
        slot was free).

    Raises:
        ValueError: an execution with that id already exists.
    """
    pack = request["pack"]
    # `secret: true` inputs go to the secret store; the run's record holds "***" for them.
    inputs, secret_inputs = split_secret_inputs(WorkflowPack.model_validate(pack).input_schema(), request.get("inputs") or {})
    record = await store.create_execution(
        execution_id=request.get("execution_id") or str(uuid.uuid4()),
        workflow_pack_id=str(pack["id"]),
        version=str(pack["version"]),
        pack_document=pack,
        inputs=inputs,
        secret_inputs=secret_inputs,
        options=request.get("options") or {},
        isolation=request.get("isolation") or "shared",
        status=ExecutionStatus.QUEUED.value,
    )
    return record, await store.admit_queued(settings.max_concurrent_executions)


class ExecutionHost:
    """Hosts ExecutionActors; one asyncio task per run. Use through Ray (see :func:`get_host`).

    Args:
        settings: engine settings.
        registry: service registry used by the runs of this host.
        dedicated: True for a one-run host that exits when its run ends.
        namespace: the Ray namespace the host lives in (inside an actor, the runtime
            context names the job's namespace instead).
    """

    def __init__(
        self, settings: Settings, registry: ServiceRegistry, name: str, dedicated: bool = False, namespace: str | None = None
    ) -> None:
        configure_json_logging()
        self._settings = settings
        self._registry = registry
        self._name = name
        self._dedicated = dedicated
        self._namespace = namespace
        self._runner = RayStepRunner(
            settings.step_task_num_cpus,
            settings.secrets_file,
            settings.task_modules,
            namespace=namespace,
            callers=0 if dedicated else settings.service_callers,
            caller_concurrency=settings.service_call_concurrency,
        )
        self._runner.start_callers()
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self._runs: dict[str, ExecutionActor] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._finished: OrderedDict[str, ExecutionActor] = OrderedDict()
        self._recovered: asyncio.Task[list[str]] | None = None
        self._reporter: asyncio.Task[None] | None = None  # the active/overdue gauges (FDD §10.1)
        self._supervisor: asyncio.Task[None] | None = None  # admission passes (FDD §9.2)
        self._delivery: asyncio.Task[None] | None = None  # event subscriptions (actors.events_delivery)
        if _reconstructed():
            # Ray restarted this host after its process died: its runs are in the database,
            # not in memory. Host them again (each claim fences any stale owner).
            self._recovered = asyncio.get_event_loop().create_task(self._recover())

    async def _recover(self) -> list[str]:
        store = await self._get_store()
        mine = [
            record.execution_id
            for record in await store.list_executions(statuses=[ExecutionStatus.RUNNING.value], limit=100_000)
            if self._owns(record.execution_id, record.isolation)
        ]
        for execution_id in mine:
            if execution_id not in self._runs:
                self._start(execution_id)
        log.info("host %s restarted; resumed %d run(s)", self._name, len(mine))
        if self._dedicated and not mine:  # its run ended (or never started) before the restart
            asyncio.get_running_loop().call_later(IDLE_EXIT_AFTER_S, _exit_actor)
        return mine

    def _owns(self, execution_id: str, isolation: str) -> bool:
        if self._dedicated:
            return self._name == dedicated_host_name(execution_id)
        return isolation != "dedicated" and self._name == shared_host_name(
            zlib.crc32(execution_id.encode()) % self._settings.execution_hosts
        )

    async def recovered(self) -> list[str]:
        """Ids of the runs this host resumed after a restart (empty if it was not restarted)."""
        return await self._recovered if self._recovered is not None else []

    async def _get_store(self) -> Store:
        async with self._store_lock:
            if self._store is None:
                # A dedicated host holds one run: two connections are plenty, and a hundred
                # dedicated runs must not take a hundred full pools of the database's slots.
                pool = min(2, self._settings.db_pool_size) if self._dedicated else self._settings.db_pool_size
                self._store = await open_store(self._settings.store_url, pool_size=pool)
                if not self._dedicated:
                    self._ensure_supervisor()
                    self._ensure_delivery()
            return self._store

    async def ready(self) -> str:
        """Open the database and wait for the service callers to be up; return the host's Ray actor id.

        Callers that are not up within :data:`CALLERS_READY_S` are logged and not waited
        for: the calls sent to them wait in Ray's queue meanwhile.
        """
        await self._get_store()
        callers = self._runner.callers
        if callers:
            try:
                async with asyncio.timeout(CALLERS_READY_S):
                    await asyncio.gather(*(caller.where.remote() for caller in callers))
            except (TimeoutError, ray.exceptions.RayError) as exc:
                log.warning("host %s: service callers not up yet (%s)", self._name, type(exc).__name__)
        return ray.get_runtime_context().get_actor_id() or ""

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Store a new execution and start it; return its status record at once.

        Args:
            request: ``{"pack": <pack document>, "inputs": {...}, "options": {...},
                "execution_id": optional str, "isolation": "shared"|"dedicated"}``; the pack
                and inputs are validated by the caller.

        Returns:
            The FDD §3.1/§3.2 record of the new execution (status ``running``, or
            ``queued`` when no slot is free).
        """
        store = await self._get_store()
        record, admitted = await store_submission(store, self._settings, request)
        for run in admitted:
            self._hand_over(run.execution_id, run.isolation)
            if run.execution_id == record.execution_id:
                record = run
        return status_record(record, self._settings)

    # --- admission (FDD §9.2, persistence.admission) ---------------------------------------

    async def _admit(self) -> list[Any]:
        """Admit queued runs while slots are free and make their hosts start them."""
        store = await self._get_store()
        admitted = await store.admit_queued(self._settings.max_concurrent_executions)
        for record in admitted:
            self._hand_over(record.execution_id, record.isolation)
        return admitted

    def _hand_over(self, execution_id: str, isolation: str) -> None:
        """Start an admitted run here if this host owns it, else tell its owner to."""
        if self._owns(execution_id, isolation):
            if execution_id not in self._runs:
                self._start(execution_id)
            return
        owner = get_host(
            self._settings,
            self._registry,
            execution_id=execution_id,
            isolation=isolation,
            namespace=self._namespace,
        )
        # Fire and forget (dropping the ref does not cancel the call): if the owner dies
        # before it claims the run, the run stays running-but-unclaimed and a supervisor
        # pass hands it over again.
        owner.resume.remote(execution_id)

    async def _supervise(self) -> None:
        """Every ``ADMISSION_POLL_S`` s: admit queued runs, re-hand-over unclaimed ones, report the queue."""
        while True:
            await asyncio.sleep(ADMISSION_POLL_S)
            try:
                store = await self._get_store()
                await self._admit()
                unclaimed = await store.unclaimed_running(UNCLAIMED_AFTER_S)
                orphaned = {eid for eid, _ in await store.unclaimed_running(ORPHANED_AFTER_S)} if unclaimed else set()
                for execution_id, isolation in unclaimed:
                    # Its owner first; shared host 0 also for dedicated runs, whose hosts may not
                    # exist; and any shared host once the owner has let it wait twice as long
                    # (the owner host is gone: the hand-over creates it again).
                    speaks_for = (
                        self._owns(execution_id, isolation)
                        or (isolation == "dedicated" and self._name == shared_host_name(0))
                        or execution_id in orphaned
                    )
                    if speaks_for:
                        self._hand_over(execution_id, isolation)
                metrics.record_queue_depth((await store.count_by_status(("queued",)))["queued"])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next pass tries again (database down, ...)
                log.warning("admission pass failed", exc_info=True)

    def _ensure_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _ensure_delivery(self) -> None:
        """Deliver the events of the runs this host owns (host 0: dedicated runs too) to the subscriptions."""
        from actors.events_delivery import EventDelivery, ledger_subscription

        subscriptions = list(self._settings.event_subscriptions)
        ledger = ledger_subscription(self._registry) if self._settings.ledger_audit else None
        if ledger is not None:
            subscriptions.append(ledger)
        if not subscriptions or (self._delivery is not None and not self._delivery.done()):
            return

        def delivers(execution_id: str, isolation: str) -> bool:
            return self._owns(execution_id, isolation) or (
                isolation == "dedicated" and self._name == shared_host_name(0)
            )

        assert self._store is not None
        loop = EventDelivery(self._store, subscriptions, owns=delivers, secrets_file=self._settings.secrets_file)
        self._delivery = asyncio.get_running_loop().create_task(loop.run_forever())

    async def queue(self) -> dict[str, int]:
        """``{"max_concurrent_executions", "running", "queued"}`` for the whole deployment (FDD §10)."""
        store = await self._get_store()
        counts = await store.count_by_status(("running", "queued"))
        return {"max_concurrent_executions": self._settings.max_concurrent_executions, **counts}

    async def resume(self, execution_id: str) -> dict[str, Any]:
        """Host an existing, unfinished execution again (it continues from its checkpoints)."""
        store = await self._get_store()
        record = await store.get_execution(execution_id)
        if not is_terminal(record.status) and execution_id not in self._runs:
            self._start(execution_id)
        return status_record(record, self._settings)

    def _start(self, execution_id: str) -> None:
        assert self._store is not None
        actor = ExecutionActor(
            execution_id, store=self._store, registry=self._registry, settings=self._settings, runner=self._runner
        )
        self._runs[execution_id] = actor
        task = asyncio.create_task(self._drive(actor), name=f"run {execution_id}")
        self._tasks[execution_id] = task
        if self._reporter is None:
            self._reporter = asyncio.create_task(metrics.report_hosted_forever(lambda: list(self._runs.values())))
        metrics.report_hosted(list(self._runs.values()))

    async def _drive(self, actor: ExecutionActor) -> None:
        try:
            await actor.run()
        except FencedError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in one run must not take the host down
            log.exception("execution %s: the engine failed", actor.execution_id)
            await actor.fail_after_crash(exc)
        finally:
            self._runs.pop(actor.execution_id, None)
            self._tasks.pop(actor.execution_id, None)
            metrics.report_hosted(list(self._runs.values()))
            self._finished[actor.execution_id] = actor
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
            if actor.final is not None:  # a slot is free: let the oldest queued run in
                asyncio.get_running_loop().create_task(self._admit_quietly())
            if self._dedicated:
                asyncio.get_running_loop().call_later(DEDICATED_EXIT_AFTER_S, _exit_actor)

    async def _admit_quietly(self) -> None:
        try:
            await self._admit()
        except Exception:  # noqa: BLE001 - the supervisor's next pass tries again
            log.warning("admission after a run ended failed", exc_info=True)

    def _actor(self, execution_id: str) -> ExecutionActor | None:
        return self._runs.get(execution_id) or self._finished.get(execution_id)

    async def status(self, execution_id: str) -> dict[str, Any]:
        """The status record; from the database, or from memory when persistence is off.

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        store = await self._get_store()
        return status_record(await store.get_execution(execution_id), self._settings)

    async def wait(self, execution_id: str, timeout_s: float) -> dict[str, Any] | None:
        """Wait up to ``timeout_s`` s for the run to end; its final record, or None if still running.

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        if self._recovered is not None:
            await self._recovered
        actor = self._actor(execution_id)
        if actor is not None and actor.final is None and execution_id not in self._runs:
            actor = None  # its task ended without a final record: the database has the truth
        if actor is None:
            record = await self.status(execution_id)
            if is_terminal(record["status"]):
                return record
            # Hosted elsewhere (or not yet resumed): let the caller poll, not spin.
            await asyncio.sleep(min(timeout_s, 0.5))
            return None
        result = await actor.events_after(1 << 62, timeout_s)
        return actor.final if result["done"] else None

    async def events(self, execution_id: str, after: int = 0, timeout_s: float = 1.0) -> dict[str, Any]:
        """Events of a run hosted here with ``seq > after``, long-polling up to ``timeout_s`` s.

        Returns:
            ``{"events": [...], "done": bool}``; ``done`` is also true for a run not hosted here.
        """
        actor = self._actor(execution_id)
        if actor is None:
            return {"events": [], "done": True}
        return await actor.events_after(after, timeout_s)

    async def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel a run hosted here; answer with its record once it has stopped.

        Returns:
            The status record; a run that had already ended is returned unchanged.

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        actor = self._runs.get(execution_id)
        task = self._tasks.get(execution_id)
        if actor is None:
            # Still queued: it ends cancelled without ever starting.
            cancelled = await (await self._get_store()).cancel_queued(execution_id)
            if cancelled is not None:
                if self._dedicated:  # its one run ended before it started: nothing left to host
                    asyncio.get_running_loop().call_later(IDLE_EXIT_AFTER_S, _exit_actor)
                return status_record(cancelled, self._settings)
        if actor is not None and actor.cancel() and task is not None:
            await asyncio.wait({task}, timeout=30)
        return await self.status(execution_id)

    async def active(self) -> list[str]:
        """Ids of the runs hosted here now."""
        return list(self._runs)

    async def callers(self) -> list[dict[str, Any]]:
        """``[{"pid", "node_id"}]`` of this host's service callers (:mod:`actors.callers`).

        A shared host starts them when it is created; a dedicated host has none (its calls
        are Ray tasks).
        """
        return list(await asyncio.gather(*(caller.where.remote() for caller in self._runner.callers)))

    async def info(self) -> dict[str, Any]:
        """``{"name", "pid", "node_id", "dedicated", "runs"}``: where this host lives."""
        context = ray.get_runtime_context()
        return {
            "name": self._name,
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "dedicated": self._dedicated,
            "runs": list(self._runs),
        }


async def _await_step_task(ref: Any, failure: str, *, actor_call: bool = False) -> dict[str, Any]:
    """Await a step attempt's Ray task; cancel the task when the wait is cancelled.

    A task is cancelled by killing its worker; a call to a service caller (``actor_call``)
    cannot be (Ray cancels actor calls only before they start: :mod:`actors.callers`).

    Returns:
        The task's outcome, or a retryable ``task_error`` (``"<failure>: <RayError class>"``)
        when the task or its worker died: that is the platform failing, not the step.
    """
    try:
        return await ref
    except asyncio.CancelledError:
        # Run cancelled, sibling failed or step timeout: stop the task, not just our wait.
        ray.cancel(ref, force=not actor_call)
        raise
    except ray.exceptions.RayError as exc:
        return {
            "ok": False,
            "error": {"kind": "task_error", "message": f"{failure}: {type(exc).__name__}", "retryable": True, "status": None},
        }


def _reconstructed() -> bool:
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - outside an actor (tests of the plain class)
        return False


def _exit_actor() -> None:
    # A dedicated host has served its one run; ending it frees its process.
    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def get_host(
    settings: Settings,
    registry: ServiceRegistry,
    *,
    execution_id: str,
    isolation: str = "shared",
    namespace: str | None = None,
) -> Any:
    """The Ray handle of the host for a run, created if it does not exist yet.

    Shared hosts are picked by a stable hash of the execution id; a dedicated host is named
    after the run. Must be called in a process connected to Ray.
    """
    remote = ray.remote(ExecutionHost)
    if isolation == "dedicated":
        name, dedicated = dedicated_host_name(execution_id), True
    else:
        index = zlib.crc32(execution_id.encode()) % settings.execution_hosts
        name, dedicated = shared_host_name(index), False
    return remote.options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        # Detached: a host outlives the process that happened to create it (a CLI, a Serve
        # replica, a notebook) and every handle to it; it ends with the cluster or when killed.
        lifetime="detached",
        max_restarts=-1,
        # Calls in flight when the host dies are retried on the restarted host.
        max_task_retries=-1,
        max_concurrency=10_000,
        num_cpus=0,
    ).remote(settings, registry, name, dedicated, namespace or ray.get_runtime_context().namespace)

