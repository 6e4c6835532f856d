"""The HTTP API (:func:`serve_app.api.create_app`) as a Ray Serve deployment.

``CortxWorkflowApi`` is ``@serve.deployment`` + ``@serve.ingress()``. The ingress is
*late-bound*: each replica builds its FastAPI app in ``__serve_build_asgi_app__`` from the
constructor arguments (engine :class:`~actors.settings.Settings`, the service registry,
the :class:`~serve_app.auth.ApiSettings` and the Ray namespace of the ExecutionHosts), so
the app and its database connections are created in the replica, never pickled. The
keyring holds only SHA-256 digests of the API keys, so no secret travels to the cluster.

Three ways in:

* :func:`build_application` — from Python (tests, ``cortx-workflow serve``)::

      serve.start(http_options={"host": "127.0.0.1", "port": 8000})
      serve.run(build_application(settings, registry), name=APP_NAME, route_prefix="/")

* :func:`build_app` — the builder named by ``serve_app/serve-config.yaml`` for
  ``serve deploy``/``serve run``: reads ``DATABASE_URL``, ``CORTX_SERVICE_REGISTRY``,
  ``CORTX_API_KEYS``… from the environment of the cluster (``runtime_env.env_vars``).
* :func:`run_until_interrupted` — what ``cortx-workflow serve`` does: create the shared
  ExecutionHosts (owned by the long-lived CLI process), resume unfinished runs once,
  start Serve (its HTTP proxy on ``host:port``, or the replica itself there with direct
  ingress: ``serve_app/ingress.py``), deploy, and block until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from actors.registry import ServiceRegistry
from actors.settings import Settings
from serve_app.api import create_app
from serve_app.auth import ApiSettings

__all__ = ["APP_NAME", "CortxWorkflowApi", "build_app", "build_application", "run_until_interrupted", "warm_hosts"]

log = logging.getLogger("cortx.serve")

#: Name of the Serve application.
APP_NAME = "cortx-workflow"


@serve.deployment(
    name="CortxWorkflowApi",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=200,
    health_check_period_s=10,
)
@serve.ingress()
class CortxWorkflowApi:
    """One Serve replica of the HTTP API.

    Args:
        settings: engine settings (database, hosts).
        registry: the service registry.
        api_settings: keys (digests), body limit, engine timeout.
        namespace: Ray namespace of the ExecutionHosts.
    """

    def __init__(self, settings: Settings, registry: ServiceRegistry, api_settings: ApiSettings, namespace: str) -> None:
        self._settings = settings
        self._registry = registry
        self._api_settings = api_settings
        self._namespace = namespace

    def __serve_build_asgi_app__(self) -> Any:
        """Build this replica's FastAPI app (called by Serve once, after ``__init__``)."""
        return create_app(
            self._settings, self._registry, namespace=self._namespace, api_settings=self._api_settings
        )


def build_application(
    settings: Settings,
    registry: ServiceRegistry,
    *,
    api_settings: ApiSettings | None = None,
    namespace: str = "cortx",
    num_replicas: int = 1,
) -> Application:
    """The bound Serve application of the API (pass it to ``serve.run``)."""
    return CortxWorkflowApi.options(num_replicas=num_replicas).bind(
        settings, registry, api_settings or ApiSettings(), namespace
    )


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder for ``serve-config.yaml`` (``import_path: serve_app.deployment:build_app``).

    Args:
        args: ``{"namespace": str = "cortx", "num_replicas": int = 1}`` from the config's ``args``.

    Raises:
        ConfigurationError: a bad environment variable.
    """
    settings = Settings.from_env()
    registry = ServiceRegistry.load(settings.service_registry_path)
    api_settings = ApiSettings.from_env()
    if not api_settings.keyring.enabled:
        log.warning("CORTX_API_KEYS is not set: the API runs without authentication; bind it to loopback only")
    return build_application(
        settings,
        registry,
        api_settings=api_settings,
        namespace=str(args.get("namespace") or "cortx"),
        num_replicas=int(args.get("num_replicas") or 1),
    )


def warm_hosts(settings: Settings, registry: ServiceRegistry, namespace: str, timeout_s: float = 120.0) -> int:
    """Create every shared ExecutionHost now, from this process, and wait until each opened the database.

    Hosts are owned by the process that creates them; creating them from the long-lived
    CLI process keeps them independent of Serve replicas. Returns the number of hosts.
    """
    import ray

    from actors.host import get_host

    hosts: dict[int, Any] = {}
    while len(hosts) < settings.execution_hosts:
        execution_id = str(uuid.uuid4())
        index = zlib.crc32(execution_id.encode()) % settings.execution_hosts
        if index not in hosts:
            hosts[index] = get_host(settings, registry, execution_id=execution_id, namespace=namespace)
    ray.get([host.ready.remote() for host in hosts.values()], timeout=timeout_s)
    return len(hosts)


def run_until_interrupted(
    settings: Settings,
    registry: ServiceRegistry,
    api_settings: ApiSettings,
    *,
    host: str,
    port: int,
    namespace: str,
    resume: Callable[[], list[str]],
    announce: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    proxy_port: int | None = None,
) -> None:
    """Run the API on Ray Serve until Ctrl-C, SIGTERM or ``stop`` is set (Ray must be connected).

    Args:
        host, port: where the API answers.
        proxy_port: None (the default): Serve's HTTP proxy listens on ``port``. Else the
            proxy's port, when Ray was started with
            :func:`serve_app.ingress.ingress_environment` for ``port`` and the replica takes it.
        resume: called once before serving (``WorkflowClient.resume_unfinished``).
        announce: receives one-line progress messages.
        stop: an event that ends serving (tests); signals end it too.
    """
    warm_hosts(settings, registry, namespace)
    resumed = resume()
    announce(f"resumed {len(resumed)} unfinished run(s)")
    direct = proxy_port is not None
    serve.start(http_options={"host": host, "port": port if proxy_port is None else proxy_port})
    try:
        serve.run(
            build_application(settings, registry, api_settings=api_settings, namespace=namespace),
            name=APP_NAME,
            route_prefix="/",
        )
        mode = "API keys required" if api_settings.keyring.enabled else "development mode: no authentication"
        way_in = f"direct ingress; Serve's proxy on port {proxy_port}" if direct else "through Serve's proxy"
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 address in a URL is bracketed
        announce(f"CORTX Workflow API listening on http://{authority} ({mode}; {way_in}); Ctrl-C stops")
        done = stop or threading.Event()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            # SIGINT too: a shell starts a background job (`cortx-workflow serve &` in a
            # script) with SIGINT ignored, and Python then keeps it ignored.
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: done.set())
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        announce("stopping")
    finally:
        serve.shutdown()
