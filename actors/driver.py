"""The Python driver API: start a run, watch it, wait for it, read its record.

For driver scripts, notebooks and the CLI::

    from actors import WorkflowClient

    client = WorkflowClient.from_env(registry_path="examples/services.yaml")
    execution_id = client.start("examples/loan-approval.yaml", {"applicant": {...}, "amount": 5000})
    record = client.wait(execution_id, timeout_s=60)
    print(record["status"], record["outputs"])

The client connects to Ray (``RAY_ADDRESS`` or a new local instance), validates the pack
and inputs in the calling process (so bad input fails before anything is stored), and
hands the run to an ExecutionHost. Records are read from the same database the hosts write,
so a run started here is visible to ``cortx-workflow status`` in another process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from actors.registry import ServiceRegistry
from actors.settings import Settings
from dsl.errors import ExecutionNotFoundError
from dsl.loader import read_text
from dsl.models import WorkflowPack
from dsl.state import is_terminal
from dsl.validation import LoadedPack, load_pack, validate_document, validate_inputs, validate_options

__all__ = ["PackSource", "WorkflowClient", "coerce_pack", "read_record"]

PackSource = WorkflowPack | LoadedPack | Mapping[str, Any] | str | Path


def coerce_pack(pack: PackSource, *, services: frozenset[str] | None = None) -> LoadedPack:
    """Validate a pack given as a model, a dict, YAML/JSON text or a file path.

    A ``str`` that names an existing file (or ends in ``.yaml``/``.yml``/``.json``) is read
    as a file; any other ``str`` is pack text.

    Raises:
        PackLoadError: a file that cannot be read or text that does not parse.
        PackValidationError: the pack is invalid (every issue listed).
    """
    if isinstance(pack, LoadedPack):
        return pack
    if isinstance(pack, WorkflowPack):
        return validate_document(pack.model_dump(mode="json", by_alias=True, exclude_none=True), services=services)
    if isinstance(pack, Path) or (
        isinstance(pack, str) and "\n" not in pack and (pack.endswith((".yaml", ".yml", ".json")) or os.path.isfile(pack))
    ):
        return load_pack(read_text(pack), str(pack), services=services)
    if isinstance(pack, str):
        return load_pack(pack, "<text>", services=services)
    return validate_document(dict(pack), "<dict>", services=services)


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

    # --- Ray ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Join Ray: ``ray_address``, else ``RAY_ADDRESS``, else a new local instance."""
        import ray

        if ray.is_initialized():
            return
        address = self._ray_address or os.environ.get("RAY_ADDRESS") or None
        ray.init(
            address=address,
            namespace=self._namespace,
            include_dashboard=False if address is None else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=True,
        )

    def _host(self, execution_id: str, isolation: str) -> Any:
        from actors.host import get_host

        self.connect()
        return get_host(
            self.settings, self.registry, execution_id=execution_id, isolation=isolation, namespace=self._namespace
        )

    # --- runs -----------------------------------------------------------------------------

    def start(
        self,
        pack: PackSource,
        inputs: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Validate and start a run; return its execution id without waiting for it.

        Args:
            pack: the pack (model, dict, YAML/JSON text or file path).
            inputs: run inputs, checked against the pack's input schema.
            options: FDD §3.1 options: ``timeout_seconds`` (s), ``max_retries``, and
                ``isolation`` (``shared``/``dedicated``).

        Raises:
            PackLoadError, PackValidationError: the pack is unreadable or invalid.
            InputValidationError: the inputs break the pack's schema.
        """
        import ray

        loaded = coerce_pack(pack, services=self.registry.names())
        run_inputs = validate_inputs(loaded.pack, dict(inputs or {}))
        opts = validate_options(dict(options or {}))
        isolation = str(opts.pop("isolation", None) or loaded.pack.isolation)
        execution_id = execution_id or str(uuid.uuid4())
        host = self._host(execution_id, isolation)
        self._hosts[execution_id] = host
        ray.get(
            host.submit.remote(
                {
                    "pack": loaded.pack.model_dump(mode="json", by_alias=True, exclude_none=True),
                    "inputs": run_inputs,
                    "options": opts,
                    "execution_id": execution_id,
                    "isolation": isolation,
                }
            )
        )
        return execution_id

    def run(self, pack: PackSource, inputs: Mapping[str, Any] | None = None, *, timeout_s: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Start a run and wait for it; return the final record (see :meth:`wait`)."""
        return self.wait(self.start(pack, inputs, **kwargs), timeout_s=timeout_s)

    def events(self, execution_id: str, after: int = 0, timeout_s: float = 1.0) -> dict[str, Any]:
        """Events of a run started by this client with ``seq > after`` (long poll, s).

        Returns:
            ``{"events": [{"seq", "type", "at", "step_key", "attempt", ...}], "done": bool}``.
        """
        import ray

        host = self._hosts.get(execution_id)
        if host is None:
            return {"events": [], "done": True}
        try:
            return ray.get(host.events.remote(execution_id, after, timeout_s))
        except ray.exceptions.RayActorError:
            return {"events": [], "done": True}

    def watch(self, execution_id: str, poll_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yield the run's events as they happen, until it ends."""
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
        import ray

        host = self._hosts.get(execution_id)
        if host is not None:
            try:
                return ray.get(host.status.remote(execution_id))
            except ray.exceptions.RayActorError:
                pass
        if not self.settings.state_persistence_enabled:
            raise ExecutionNotFoundError(execution_id)
        return asyncio.run(read_record(self.settings.store_url, execution_id))

    def resume_unfinished(self) -> list[str]:
        """Host again every run that is not terminal (after the whole cluster went down).

        Each run is claimed by its host, which fences any owner still alive somewhere, and
        continues from its checkpoints. Returns the ids resumed.
        """
        import ray

        from persistence.store import open_store

        async def unfinished() -> list[tuple[str, str]]:
            store = await open_store(self.settings.store_url, pool_size=1)
            try:
                records = await store.list_executions(statuses=["running"], limit=100_000)
                return [(r.execution_id, r.isolation) for r in records]
            finally:
                await store.close()

        resumed = []
        for execution_id, isolation in asyncio.run(unfinished()):
            host = self._host(execution_id, isolation)
            self._hosts[execution_id] = host
            ray.get(host.resume.remote(execution_id))
            resumed.append(execution_id)
        return resumed

    def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel a run started by this client; return its record once it has stopped.

        Cancelling a run that already ended changes nothing and returns its record.
        """
        import ray

        host = self._hosts.get(execution_id)
        if host is None:
            return self.status(execution_id)
        return ray.get(host.cancel.remote(execution_id))
