"""ExecutionHosts: long-lived async Ray actors, each hosting many ExecutionActors.

A Ray actor process per run costs about 470 ms to start and 48 MB (measured on the
development machine, ``docs/architecture.md``), so runs share hosts: ``cortx-host-<n>``,
``CORTX_EXECUTION_HOSTS`` of them, a run placed on one by a hash of its id. A run (or
pack) with ``isolation: dedicated`` gets a host of its own, named
``cortx-dedicated-<execution_id>``, which exits when its run ends.

The host is the step tasks' submitter: a ``service_call`` attempt runs as the Ray task
:func:`actors.tasks.service_call_task`, awaited without blocking the host's event loop, and
cancelled (``ray.cancel``) when the run is cancelled or a sibling fails.

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

from actors.execution import ExecutionActor, status_record
from actors.logs import configure_json_logging
from actors.registry import ServiceRegistry
from actors.scheduler import ServiceRequest
from actors.settings import Settings
from actors.tasks import service_call_task
from dsl.errors import FencedError
from dsl.state import ExecutionStatus, is_terminal
from persistence.store import Store, open_store

__all__ = ["ExecutionHost", "RayStepRunner", "dedicated_host_name", "get_host", "shared_host_name"]

log = logging.getLogger("cortx.host")

#: Final records kept in memory per host for ``wait`` after a run ended.
FINISHED_KEPT = 10_000


def shared_host_name(index: int) -> str:
    """Ray actor name of shared host ``index``."""
    return f"cortx-host-{index}"


def dedicated_host_name(execution_id: str) -> str:
    """Ray actor name of the dedicated host of ``execution_id``."""
    return f"cortx-dedicated-{execution_id}"


class RayStepRunner:
    """Runs step work as Ray tasks (the :class:`~actors.scheduler.StepRunner` of a host).

    Args:
        num_cpus: CPUs Ray reserves per step task (a fraction: the work is mostly I/O).
    """

    def __init__(self, num_cpus: float) -> None:
        self._num_cpus = num_cpus

    async def call_service(self, request: ServiceRequest) -> dict[str, Any]:
        """Submit one service call attempt as a Ray task and await it.

        Returns:
            The :func:`actors.http_call.call_http` result; a task that died (worker killed,
            node lost) is reported as a retryable ``task_error``.
        """
        ref = service_call_task.options(
            name=f"step {request.step_key} #{request.attempt} [{request.execution_id[:8]}]",
            num_cpus=self._num_cpus,
        ).remote(request.call_kwargs())
        try:
            return await ref
        except asyncio.CancelledError:
            # The run was cancelled or a sibling failed: stop the task too, not just our wait.
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayError as exc:
            return {
                "ok": False,
                "error": {
                    "kind": "task_error",
                    "message": f"step task failed: {type(exc).__name__}",
                    "retryable": True,
                    "status": None,
                },
            }


class ExecutionHost:
    """Hosts ExecutionActors; one asyncio task per run. Use through Ray (see :func:`get_host`).

    Args:
        settings: engine settings.
        registry: service registry used by the runs of this host.
        dedicated: True for a one-run host that exits when its run ends.
    """

    def __init__(self, settings: Settings, registry: ServiceRegistry, name: str, dedicated: bool = False) -> None:
        configure_json_logging()
        self._settings = settings
        self._registry = registry
        self._name = name
        self._dedicated = dedicated
        self._runner = RayStepRunner(settings.step_task_num_cpus)
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self._runs: dict[str, ExecutionActor] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._finished: OrderedDict[str, ExecutionActor] = OrderedDict()
        self._recovered: asyncio.Task[list[str]] | None = None
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
                self._store = await open_store(self._settings.store_url, pool_size=self._settings.db_pool_size)
            return self._store

    async def ready(self) -> str:
        """Open the database; return the host's Ray actor id."""
        await self._get_store()
        return ray.get_runtime_context().get_actor_id() or ""

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Store a new execution and start it; return its status record at once.

        Args:
            request: ``{"pack": <pack document>, "inputs": {...}, "options": {...},
                "execution_id": optional str, "isolation": "shared"|"dedicated"}``; the pack
                and inputs are validated by the caller.

        Returns:
            The FDD §3.1/§3.2 record of the new execution (status ``running``).
        """
        store = await self._get_store()
        pack = request["pack"]
        record = await store.create_execution(
            execution_id=request.get("execution_id") or str(uuid.uuid4()),
            workflow_pack_id=str(pack["id"]),
            version=str(pack["version"]),
            pack_document=pack,
            inputs=request.get("inputs") or {},
            options=request.get("options") or {},
            isolation=request.get("isolation") or "shared",
            status=ExecutionStatus.RUNNING.value,
        )
        self._start(record.execution_id)
        return status_record(record, self._settings)

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
            self._finished[actor.execution_id] = actor
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
            if self._dedicated:
                asyncio.get_running_loop().call_later(30.0, _exit_actor)

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
        if actor is not None and actor.cancel() and task is not None:
            await asyncio.wait({task}, timeout=30)
        return await self.status(execution_id)

    async def active(self) -> list[str]:
        """Ids of the runs hosted here now."""
        return list(self._runs)

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
    ).remote(settings, registry, name, dedicated)

