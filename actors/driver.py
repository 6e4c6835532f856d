"""The Python driver API: deploy packs, start runs, watch, wait for, read, list and cancel them.

For driver scripts, notebooks and the CLI (``docs/driver.md``)::

    from actors import WorkflowClient

    client = WorkflowClient.from_env(registry_path="examples/services.yaml")
    client.deploy("examples/loan-approval.yaml")             # {"id", "version", "created", ...}
    execution_id = client.start(workflow_pack_id="loan-approval", inputs={"applicant": {...}, "amount": 5000})
    record = client.wait(execution_id, timeout_s=60)
    print(record["status"], record["outputs"])
    for attempt in client.steps(execution_id)["steps"]:
        print(attempt["step_key"], attempt["attempt"], attempt["status"])

The client connects to Ray (``RAY_ADDRESS`` or a new local instance), validates the pack
and inputs in the calling process (so bad input fails before anything is stored), and
hands the run to an ExecutionHost. Packs, records and checkpoints are read from and
written to the same database (and the same hosts, by Ray namespace) as the HTTP API's, with
the same code (:mod:`persistence.packs`, :mod:`persistence.listing`,
:mod:`persistence.history`): a run started here is visible over HTTP and to
``cortx-workflow status`` in another process, and the other way round.

Every method is synchronous. Database work runs in a private event loop, on a helper
thread when the caller already runs one (Jupyter), so the same calls work from a plain
``python script.py`` and from a notebook cell.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from actors.registry import ServiceRegistry
from actors.settings import Settings
from dsl.errors import ConfigurationError, ExecutionNotFoundError
from dsl.loader import read_text
from dsl.models import WorkflowPack
from dsl.state import ExecutionStatus, is_terminal
from dsl.task_spec import TaskPolicy
from dsl.validation import LoadedPack, load_pack, validate_document, validate_inputs, validate_options

if TYPE_CHECKING:
    from persistence.records import ExecutionRecord
    from persistence.store import Store

__all__ = [
    "LIST_LIMIT_MAX", "PackSource", "WorkflowClient", "coerce_pack", "local_ray_system_config", "ray_address",
    "read_record", "run_sync",
]

T = TypeVar("T")
#: Largest page :meth:`WorkflowClient.list` returns (as ``GET /v1/workflows/executions``).
LIST_LIMIT_MAX = 200
#: How often a cancel is re-sent while the run's host has not taken it up yet.
_CANCEL_ATTEMPTS = 20

PackSource = WorkflowPack | LoadedPack | Mapping[str, Any] | str | Path


def coerce_pack(
    pack: PackSource, *, services: frozenset[str] | None = None, tasks: TaskPolicy | None = None
) -> LoadedPack:
    """Validate a pack given as a model, a dict, YAML/JSON text or a file path.

    A ``str`` that names an existing file (or ends in ``.yaml``/``.yml``/``.json``) is read
    as a file; any other ``str`` is pack text. ``tasks`` checks the functions of ``task``
    steps (``dsl.task_spec``); None skips that check.

    Raises:
        PackLoadError: a file that cannot be read or text that does not parse.
        PackValidationError: the pack is invalid (every issue listed).
    """
    if isinstance(pack, LoadedPack):
        return pack
    if isinstance(pack, WorkflowPack):
        return validate_document(
            pack.model_dump(mode="json", by_alias=True, exclude_none=True), services=services, tasks=tasks
        )
    if isinstance(pack, Path) or (
        isinstance(pack, str) and "\n" not in pack and (pack.endswith((".yaml", ".yml", ".json")) or os.path.isfile(pack))
    ):
        return load_pack(read_text(pack), str(pack), services=services, tasks=tasks)
    if isinstance(pack, str):
        return load_pack(pack, "<text>", services=services, tasks=tasks)
    return validate_document(dict(pack), "<dict>", services=services, tasks=tasks)


async def read_record(database_url: str, execution_id: str) -> dict[str, Any]:
    """Read an execution's status record straight from the database.

    Raises:
        ExecutionNotFoundError: unknown id.
        ConfigurationError: the database cannot be reached.
    """
    from persistence.store import open_store

    # A read does not create or migrate a schema.
    store = await open_store(database_url, pool_size=1, migrate=False)
    try:
        return (await store.get_execution(execution_id)).to_status_dict()
    finally:
        await store.close()


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` to completion from synchronous code; return its result.

    In a thread without a running event loop (a script) it uses ``asyncio.run``. Where a
    loop already runs in this thread (a Jupyter cell), ``asyncio.run`` would refuse, so
    the coroutine runs in a new loop on a helper thread while this thread waits.

    Raises:
        Exception: whatever the coroutine raises.
    """

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cortx-driver") as pool:
        return pool.submit(asyncio.run, main()).result()


#: Seconds to wait for a TCP answer from a Ray address before calling it unreachable.
RAY_CONNECT_PROBE_S = 5.0


def local_ray_system_config(step_task_num_cpus: float, num_cpus: float | None = None) -> dict[str, Any]:
    """Ray system settings for a local Ray this process starts (``ray.init(_system_config=...)``).

    ``num_workers_soft_limit``: by default Ray keeps at most ``num_cpus`` idle task
    workers and kills the others after 1 s idle. Step tasks reserve a fraction of a CPU
    (``CORTX_STEP_TASK_NUM_CPUS``, 0.25), so ``num_cpus / step_task_num_cpus`` of them run
    at once, and under steady load Ray kept killing and starting worker processes (each
    start costs about a second of CPU): measured on 2 cores, HTTP execute went from 6.4 to 21
    runs a second with the limit raised to fit every concurrent step task. A cluster
    started with ``ray start`` takes the same setting from the environment variable
    ``RAY_num_workers_soft_limit`` (``docs/deploy.md``).

    Args:
        step_task_num_cpus: CPUs one step task reserves (``Settings.step_task_num_cpus``).
        num_cpus: the CPUs the local Ray will have; default ``os.cpu_count()``.

    Returns:
        ``{"num_workers_soft_limit": int}``.
    """
    cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
    per_task = max(step_task_num_cpus, 0.125)  # 0 (no reservation): bound it as for 1/8 CPU
    return {"num_workers_soft_limit": int(max(cpus, cpus / per_task)) + 2}


def ray_address(explicit: str | None = None) -> str:
    """The Ray address to join: ``explicit``, else ``RAY_ADDRESS``, else ``"local"`` (a new
    local Ray, never a cluster ``ray start`` left recorded on the machine)."""
    return explicit or os.environ.get("RAY_ADDRESS") or "local"


def probe_ray_address(address: str) -> None:
    """Fail fast when a ``host:port`` (or ``ray://host:port``) Ray address does not answer.

    ``auto``/``local`` and other forms are left to ``ray.init``.

    Raises:
        ConfigurationError: (``RAY_ADDRESS``) nothing accepts a TCP connection there.
    """
    import socket

    from dsl.errors import ConfigurationError

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_PROBE_S):
            return
    except OSError as exc:
        raise ConfigurationError(
            "RAY_ADDRESS", address,
            f"no Ray cluster answers at {host}:{port} ({exc.strerror or type(exc).__name__}); "
            "start one with `ray start --head --port=6380`, or unset RAY_ADDRESS to start a local Ray",
        ) from None


def _execution_id(value: Any) -> str:
    """``value`` if it is an execution id (a str).

    Raises:
        TypeError: anything else, naming its type (a status record passed where its
            ``execution_id`` was meant is the usual mistake).
    """
    if isinstance(value, str):
        return value
    hint = " (pass record['execution_id'], not the record)" if isinstance(value, dict) else ""
    raise TypeError(f"execution_id must be a str, got {type(value).__name__}{hint}")


class WorkflowClient:
    """Starts and follows runs from a Python process (driver script, notebook, CLI).

    Args:
        settings: engine settings; :meth:`from_env` reads them from the environment.
        registry: the service registry runs use.
        ray_address: a cluster to join; None uses ``RAY_ADDRESS`` or starts a local Ray.
        namespace: Ray namespace of the hosts (one per deployment: hosts are bound to the
            settings and registry they were created with).
    """

    def __init__(
        self,
        settings: Settings,
        registry: ServiceRegistry | None = None,
        *,
        ray_address: str | None = None,
        namespace: str = "cortx",
    ) -> None:
        self.settings = settings
        self.registry = registry or ServiceRegistry.load(settings.service_registry_path)
        self._ray_address = ray_address
        self._namespace = namespace
        self._hosts: dict[str, Any] = {}

    @classmethod
    def from_env(cls, *, registry_path: str | Path | None = None, **kwargs: Any) -> WorkflowClient:
        """A client configured from environment variables (see :mod:`actors.settings`).

        Args:
            registry_path: service registry file; overrides ``CORTX_SERVICE_REGISTRY``.
        """
        settings = Settings.from_env()
        if registry_path is not None:
            settings = settings.with_changes(service_registry_path=str(Path(registry_path).resolve()))
        return cls(settings, **kwargs)

    @property
    def namespace(self) -> str:
        """The Ray namespace of this client's ExecutionHosts (the HTTP API's ``--namespace``)."""
        return self._namespace

    # --- Ray ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Join Ray: ``ray_address``, else ``RAY_ADDRESS``, else a new local instance.

        No address (or ``local``) always starts a new local Ray, with
        :func:`local_ray_system_config`, even when a cluster started with ``ray start``
        runs on the same machine (Ray's own ``ray.init()`` would join that one instead); join
        it with ``auto`` or its address.

        Raises:
            ConfigurationError: (``RAY_ADDRESS``) a ``host:port`` address where nothing
                listens, said within :data:`RAY_CONNECT_PROBE_S` s, where ``ray.init`` would
                keep trying for minutes; or a cluster that refused the connection (e.g. one
                with token authentication, joined without ``RAY_AUTH_MODE=token``).
        """
        import ray

        if ray.is_initialized():
            return
        address = ray_address(self._ray_address)
        local = address == "local"
        if not local:
            probe_ray_address(address)
        try:
            ray.init(
                address=address,
                namespace=self._namespace,
                include_dashboard=False if local else None,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=True,
                **({"_system_config": local_ray_system_config(self.settings.step_task_num_cpus)} if local else {}),
            )
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            if local:
                raise
            from dsl.errors import ConfigurationError

            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigurationError(
                "RAY_ADDRESS", address,
                f"cannot join this Ray cluster ({first}); if it uses token authentication (Ray turns it on at "
                "`ray start` when ~/.ray/auth_token exists), set RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token), or use RAY_ADDRESS=auto on the cluster's own machine",
            ) from None

    def _host(self, execution_id: str, isolation: str) -> Any:
        from actors.host import get_host

        self.connect()
        return get_host(
            self.settings, self.registry, execution_id=execution_id, isolation=isolation, namespace=self._namespace
        )

    def _existing_host(self, execution_id: str) -> Any | None:
        """The handle of the host that runs (or ran) a run, if that host exists; never creates one.

        Found from the run's ``isolation`` in the database, so it works for runs another
        process (the HTTP API, another script) started.
        """
        import ray

        from actors.host import dedicated_host_name, shared_host_name

        host = self._hosts.get(execution_id)
        if host is not None or not self.settings.state_persistence_enabled:
            return host
        try:
            record = self._record(execution_id)
        except ExecutionNotFoundError:
            return None
        if record.isolation == "dedicated":
            name = dedicated_host_name(execution_id)
        else:
            name = shared_host_name(zlib.crc32(record.execution_id.encode()) % self.settings.execution_hosts)
        self.connect()
        try:
            return ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            return None

    # --- the database ---------------------------------------------------------------------

    def _with_store(self, body: Callable[[Store], Awaitable[T]], *, migrate: bool = False) -> T:
        """Open the deployment's store, run ``body(store)``, close it (see :func:`run_sync`).

        Raises:
            ConfigurationError: persistence is off (``STATE_PERSISTENCE_ENABLED=false``:
                there is no shared database to read), or the database cannot be reached.
        """
        from persistence.store import open_store

        if not self.settings.state_persistence_enabled:
            raise ConfigurationError(
                "STATE_PERSISTENCE_ENABLED", "false", "packs, run lists and step histories live in the database"
            )
        url = self.settings.store_url

        async def run() -> T:
            store = await open_store(url, pool_size=1, migrate=migrate)
            try:
                return await body(store)
            finally:
                await store.close()

        return run_sync(run)

    def _record(self, execution_id: str) -> ExecutionRecord:
        """The run's full record (isolation included) from the database.

        Raises:
            ExecutionNotFoundError: unknown id.
        """

        async def read(store: Store) -> ExecutionRecord:
            return await store.get_execution(execution_id)

        return self._with_store(read)

    # --- packs ----------------------------------------------------------------------------

    def deploy(self, pack: PackSource) -> dict[str, Any]:
        """Validate a pack and store it as a pack version, as ``POST /v1/packs`` does.

        The same table, validation (services checked against this client's registry) and
        rules as the HTTP API (:mod:`persistence.packs`): versions are immutable per
        ``(id, version)``; deploying the same document again (as YAML, JSON, a dict or a
        model) changes nothing and answers ``created: False``. Runs then name it with
        ``start(workflow_pack_id=..., version=...)``, here or over HTTP.

        Args:
            pack: the pack: a :class:`dsl.models.WorkflowPack` built in Python, a dict,
                YAML/JSON text, or a file path (see :func:`coerce_pack`).

        Returns:
            ``{"id", "version", "name", "description", "deprecated", "created_at",
            "content_hash", "steps", "created", "warnings"}`` (the ``POST /v1/packs`` body;
            ``steps`` counts steps at every level, ``created_at`` is ISO 8601 UTC).

        Raises:
            PackLoadError, PackValidationError: the pack is unreadable or invalid.
            UnstorableValueError: a string the database cannot store (NUL, lone surrogate).
            PackConflictError: this id and version exist with a different document.
            ConfigurationError: the database cannot be reached, or persistence is off.
        """
        from persistence.packs import save_loaded_pack

        # Registered task names are checked when a run starts (drivers register at run time).
        loaded = coerce_pack(pack, services=self.registry.names(), tasks=TaskPolicy(self.settings.task_modules))
        # `source` keeps the text deployed; a pack given as a dict or model has none, so
        # its JSON is kept (what the API keeps for a pack posted as JSON).
        source = loaded.source_text if loaded.source_text is not None else json.dumps(loaded.document, indent=2)

        async def save(store: Store) -> dict[str, Any]:
            return (await save_loaded_pack(store, loaded, source)).summary()

        return self._with_store(save, migrate=True)

    # --- runs -----------------------------------------------------------------------------

    def start(
        self,
        pack: PackSource | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        workflow_pack_id: str | None = None,
        version: str | None = None,
        options: Mapping[str, Any] | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Validate and start a run; return its execution id without waiting for it.

        Give either ``pack`` (the pack inline) or ``workflow_pack_id`` (a deployed pack,
        as ``POST /v1/workflows/execute`` does: ``version`` omitted means the latest
        version that is not deprecated).

        Args:
            pack: the pack (model, dict, YAML/JSON text or file path; :func:`coerce_pack`).
            inputs: run inputs, checked against the pack's input schema (defaults filled in).
            workflow_pack_id: id of a pack deployed with :meth:`deploy` or ``POST /v1/packs``.
            version: its version (only with ``workflow_pack_id``).
            options: FDD §3.1 options: ``timeout_seconds`` (s), ``max_retries``, and
                ``isolation`` (``shared``/``dedicated``).
            execution_id: the run's id (a UUID); a new uuid4 when omitted.

        Raises:
            ValueError: neither or both of ``pack`` and ``workflow_pack_id``, or
                ``version`` without ``workflow_pack_id``.
            PackNotFoundError: no such deployed pack or version (or every version deprecated).
            PackLoadError, PackValidationError: the pack is unreadable or invalid.
            InputValidationError: the inputs (or options) break the pack's schema.
            UnstorableValueError: a string the database cannot store (NUL, lone surrogate).
        """
        import ray

        if (pack is None) == (workflow_pack_id is None):
            raise ValueError("give either pack or workflow_pack_id")
        if workflow_pack_id is not None:
            from persistence.packs import resolve_pack

            async def resolve(store: Store) -> Any:
                return await resolve_pack(store, workflow_pack_id, version)

            record = self._with_store(resolve)
            loaded = validate_document(
                record.document, f"{record.pack_id}@{record.version}", services=self.registry.names(),
                tasks=self._task_policy(),
            )
            document = record.document
        else:
            if version is not None:
                raise ValueError("version names a deployed pack: give workflow_pack_id with it")
            assert pack is not None
            loaded = coerce_pack(pack, services=self.registry.names(), tasks=self._task_policy())
            document = loaded.pack.model_dump(mode="json", by_alias=True, exclude_none=True)
        run_inputs = validate_inputs(loaded.pack, dict(inputs or {}))
        opts = validate_options(dict(options or {}))
        if self.settings.state_persistence_enabled:
            from persistence.validation import check_storable

            # A pack text the database cannot hold is refused here, as the HTTP API does (422);
            # validate_inputs already refused such inputs.
            check_storable(document)
        isolation = str(opts.pop("isolation", None) or loaded.pack.isolation)
        execution_id = execution_id or str(uuid.uuid4())
        host = self._host(execution_id, isolation)
        self._hosts[execution_id] = host
        ray.get(
            host.submit.remote(
                {
                    "pack": document,
                    "inputs": run_inputs,
                    "options": opts,
                    "execution_id": execution_id,
                    "isolation": isolation,
                }
            )
        )
        return execution_id

    def register_task(self, name: str, fn: Callable[..., Any]) -> None:
        """Make ``fn`` callable by ``task`` steps as ``function: <name>``, from any Ray worker.

        ``fn`` is pickled by value (its module too), so a function defined in this script,
        a test module or a notebook works without being importable on the workers; the
        bytes are kept by the namespace's ``cortx-task-registry`` actor, which outlives this
        process (``actors.task_registry``). Registered functions need no
        ``CORTX_TASK_MODULES`` entry. Registering a name again replaces it for steps that
        start afterwards. Example::

            client.register_task("score-item", lambda item: {"score": len(item["id"])})

        Raises:
            ValueError: ``name`` is not letters, digits, ``_ . -`` (starting with a letter,
                at most 128; no ``:``).
            TypeError: ``fn`` is not callable or cannot be pickled.
        """
        from actors import task_registry

        self.connect()
        task_registry.register(name, fn, namespace=self._namespace)

    def _task_policy(self) -> TaskPolicy:
        """The settings' module allowlist and the names registered in this namespace."""
        from actors import task_registry

        self.connect()
        return TaskPolicy(self.settings.task_modules, task_registry.registered_names(self._namespace))

    def run(self, pack: PackSource, inputs: Mapping[str, Any] | None = None, *, timeout_s: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Start a run and wait for it; return the final record (see :meth:`wait`)."""
        return self.wait(self.start(pack, inputs, **kwargs), timeout_s=timeout_s)

    def events(self, execution_id: str, after: int = 0, timeout_s: float = 1.0) -> dict[str, Any]:
        """Events of a run with ``seq > after``, long-polling up to ``timeout_s`` s.

        Events live in the memory of the run's ExecutionHost (``docs/api.md``, "events"):
        any run whose host still holds them, whoever started it. A run no host holds
        answers no events and ``done`` true; its :meth:`steps` are in the database.

        Returns:
            ``{"events": [{"seq", "type", "at", "step_key", "attempt", ...}], "done": bool}``.
        """
        execution_id = _execution_id(execution_id)
        import ray

        host = self._existing_host(execution_id)
        if host is None:
            return {"events": [], "done": True}
        try:
            return ray.get(host.events.remote(execution_id, after, timeout_s))
        except ray.exceptions.RayActorError:
            return {"events": [], "done": True}

    def watch(self, execution_id: str, poll_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yield the run's events as they happen, until it ends."""
        execution_id = _execution_id(execution_id)
        after = 0
        while True:
            batch = self.events(execution_id, after, poll_s)
            for event in batch["events"]:
                after = max(after, event["seq"])
                yield event
            if batch["done"]:
                return

    def wait(self, execution_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait for a run to end; return its status record (FDD §3.2).

        Args:
            timeout_s: give up after this many s and return the record as it is then.

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        execution_id = _execution_id(execution_id)
        import ray

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        host = self._hosts.get(execution_id)
        while True:
            remaining = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            if host is not None:
                try:
                    final = ray.get(host.wait.remote(execution_id, remaining))
                except ray.exceptions.RayActorError:
                    host = None
                    continue
                if final is not None:
                    return final
            else:
                record = self.status(execution_id)
                if is_terminal(record["status"]):
                    return record
                time.sleep(min(0.5, remaining))
            if deadline is not None and time.monotonic() >= deadline:
                return self.status(execution_id)

    def status(self, execution_id: str) -> dict[str, Any]:
        """The run's current status record (FDD §3.2).

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        execution_id = _execution_id(execution_id)
        import ray

        host = self._hosts.get(execution_id)
        if host is not None:
            try:
                return ray.get(host.status.remote(execution_id))
            except ray.exceptions.RayActorError:
                pass
        if not self.settings.state_persistence_enabled:
            raise ExecutionNotFoundError(execution_id)
        return run_sync(lambda: read_record(self.settings.store_url, execution_id))

    def queue(self) -> dict[str, int]:
        """Admission control (FDD §9.2, §10): ``{"max_concurrent_executions", "running", "queued"}``.

        Counts cover the whole deployment (every host on this database).
        """
        import ray

        return dict(ray.get(self._host(str(uuid.uuid4()), "shared").queue.remote()))

    def host_info(self, execution_id: str) -> dict[str, Any] | None:
        """Where a run is hosted: its ExecutionHost's ``{"name", "pid", "node_id", "dedicated", "runs"}``.

        ``pid`` is the host's worker process on node ``node_id`` (as the Ray dashboard
        shows it); ``runs`` are the ids it hosts now. None when no host of the run exists
        (a dedicated host that exited, a cluster that restarted). Never creates a host.
        """
        execution_id = _execution_id(execution_id)
        import ray

        host = self._existing_host(execution_id)
        if host is None:
            return None
        try:
            return dict(ray.get(host.info.remote()))
        except ray.exceptions.RayActorError:
            return None

    def resume_unfinished(self) -> list[str]:
        """Host again every ``running`` run (after the whole cluster went down).

        Queued runs are left to admission: a host is started so its admission pass lets
        them in as slots free. Each run is claimed by its host, which fences any owner still
        alive somewhere, and continues from its checkpoints. Returns the ids resumed.

        Raises:
            ConfigurationError: (``CORTX_SERVICE_REGISTRY``) an unfinished run calls a
                service this client's registry does not have; nothing is resumed, because
                the run would fail for good on its next call.
        """
        import ray

        from dsl.errors import ConfigurationError
        from dsl.models import ServiceCallStep, WorkflowPack, all_steps
        from persistence.store import open_store

        async def unfinished() -> list[tuple[str, str, dict]]:
            store = await open_store(self.settings.store_url, pool_size=1)
            try:
                records = await store.list_executions(statuses=["running"], limit=100_000)
                return [(r.execution_id, r.isolation, r.pack_document) for r in records]
            finally:
                await store.close()

        runs = run_sync(unfinished)
        known = self.registry.names()
        missing = sorted({
            step.service
            for _, _, document in runs
            for _, step, _ in all_steps(WorkflowPack.model_validate(document))
            if isinstance(step, ServiceCallStep) and step.service not in known
        })
        if missing:
            raise ConfigurationError(
                "CORTX_SERVICE_REGISTRY", self.settings.service_registry_path or "(none)",
                f"unfinished runs call services this registry lacks ({', '.join(missing)}); pass the registry "
                "they were started with (--services FILE or CORTX_SERVICE_REGISTRY)",
            )
        self.connect()
        resumed, calls = [], []
        for execution_id, isolation, _ in runs:
            host = self._host(execution_id, isolation)
            self._hosts[execution_id] = host
            calls.append(host.resume.remote(execution_id))  # all sent before any answer is awaited
            resumed.append(execution_id)
        ray.get(calls)
        # A live host's admission pass lets queued runs in as slots free (FDD §9.2).
        ray.get(self._host(str(uuid.uuid4()), "shared").ready.remote())
        return resumed

    def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel a run; return its status record once it has stopped (FDD §3.3).

        Works for any run of the deployment, whoever started it (this client, another
        script, the HTTP API): its host is found from the run's ``isolation`` in the
        database. A queued run ends ``cancelled`` without starting; a running one once its
        in-flight step tasks are cancelled; a run hosted nowhere (the cluster restarted
        and it was not resumed) is hosted again, then cancelled, as the HTTP cancel does.
        Cancelling a run that already ended changes nothing and returns its record (the
        HTTP API answers 409 for a completed or failed one instead).

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        execution_id = _execution_id(execution_id)
        import ray

        host = self._hosts.get(execution_id)
        if host is None:
            if not self.settings.state_persistence_enabled:
                return self.status(execution_id)  # no shared database: only our own runs
            record = self._record(execution_id)
            if is_terminal(record.status):
                return record.to_status_dict()
            execution_id = record.execution_id
            host = self._host(execution_id, record.isolation)
        current: dict[str, Any] = {}
        resumed = False
        for _ in range(_CANCEL_ATTEMPTS):
            try:
                current = ray.get(host.cancel.remote(execution_id))
                if is_terminal(current["status"]):
                    return current
                if not resumed:
                    # Not hosted (or its task not started yet): make sure its host owns it.
                    resumed = True
                    ray.get(host.resume.remote(execution_id))
            except ray.exceptions.RayActorError:
                host = self._host(execution_id, str(self._record(execution_id).isolation))
            time.sleep(0.1)
        return current or self.status(execution_id)

    def steps(self, execution_id: str) -> dict[str, Any]:
        """The run's step history, as ``GET /v1/workflows/executions/{id}/steps`` answers it.

        Returns:
            ``{"execution_id", "status", "current_step", "steps": [attempt, ...]}``: one
            entry per step attempt (checkpoint), by end time, each ``{"step_key",
            "step_id", "step_type", "attempt", "status", "started_at", "ended_at"
            (ISO 8601 UTC), "duration_ms", "outputs", "error", "idempotency_key",
            "node_id"}`` (:func:`persistence.history.step_history`).

        Raises:
            ExecutionNotFoundError: unknown id.
            ConfigurationError: the database cannot be reached, or persistence is off.
        """
        execution_id = _execution_id(execution_id)
        from persistence.history import step_history

        async def read(store: Store) -> dict[str, Any]:
            record = await store.get_execution(execution_id)
            return step_history(record, await store.load_checkpoints(record.execution_id))

        return self._with_store(read)

    # `list` shadows the builtin inside the class body: keep it the last method.
    def list(
        self,
        workflow_pack_id: str | None = None,
        status: str | ExecutionStatus | Collection[str | ExecutionStatus] | None = None,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Runs of the deployment, newest first, as ``GET /v1/workflows/executions`` lists them.

        The same keyset pagination and cursors (:mod:`persistence.listing`): pass
        ``next_cursor`` back as ``cursor``, with the same filters, for the next page; a
        cursor of the HTTP API works here and the other way round.

        Args:
            workflow_pack_id: only this pack's runs.
            status: only this status, or these statuses (``queued``, ``running``,
                ``completed``, ``failed``, ``cancelled``).
            created_after: created at or after this instant (inclusive; naive = UTC).
            created_before: created before this instant (exclusive; naive = UTC).
            limit: page size, 1 to 200.
            cursor: ``next_cursor`` of the previous page.

        Returns:
            ``{"items": [status record + "created_at", ...], "next_cursor": str | None}``
            (``None`` on the last page).

        Raises:
            ValueError: an unknown status, a limit out of range, or a cursor this listing
                did not make.
            ConfigurationError: the database cannot be reached, or persistence is off.
        """
        from persistence.listing import decode_cursor, list_page

        statuses: builtins.list[str] | None = None
        if status is not None:
            wanted = [status] if isinstance(status, (str, ExecutionStatus)) else [*status]
            known = {s.value for s in ExecutionStatus}
            statuses = []
            for item in wanted:
                value = item.value if isinstance(item, ExecutionStatus) else item
                if value not in known:
                    raise ValueError(f"unknown status {value!r}; expected one of {', '.join(sorted(known))}")
                if value not in statuses:
                    statuses.append(value)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}, got {limit!r}")
        position = decode_cursor(cursor) if cursor is not None else None
        after, before = _utc(created_after), _utc(created_before)

        async def page(store: Store) -> dict[str, Any]:
            return await list_page(
                store,
                workflow_pack_id=workflow_pack_id,
                statuses=statuses,
                created_after=after,
                created_before=before,
                after=position,
                limit=limit,
            )

        return self._with_store(page)



def _utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (naive values are taken as UTC), as the HTTP listing reads them."""
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
