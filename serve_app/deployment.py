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

import contextlib
import logging
import signal
import threading
import time
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

__all__ = [
    "APP_NAME",
    "CortxWorkflowApi",
    "build_app",
    "build_application",
    "ray_gone",
    "run_until_interrupted",
    "warm_hosts",
]

log = logging.getLogger("cortx.serve")

#: Name of the Serve application.
APP_NAME = "cortx-workflow"
#: Seconds between two looks at Ray while ``cortx-workflow serve`` serves (:func:`ray_gone`).
RAY_CHECK_EVERY_S = 5.0
#: Longest wait for Ray's answer to one look, in s (a GCS answers ``ray.nodes()`` in
#: milliseconds, and in about a second on a loaded two-core machine).
RAY_CHECK_TIMEOUT_S = 5.0
#: Looks in a row without an answer after which Ray counts as gone (a busy GCS is slow, not
#: gone). After a look without an answer the next one follows at once.
RAY_CHECK_MISSES = 3
#: Seconds Ray's processes left behind get between SIGTERM and SIGKILL when Ray is gone.
LEFTOVER_GRACE_S = 3.0
_NO_ANSWER = "no answer"


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
    check_every_s: float = RAY_CHECK_EVERY_S,
) -> str | None:
    """Run the API on Ray Serve until Ctrl-C, SIGTERM or ``stop`` is set (Ray must be connected),
    or until the Ray under it is gone.

    Every ``check_every_s`` seconds :func:`ray_gone` looks at Ray: a local Ray whose GCS or
    raylet process has exited (a ``ray stop`` elsewhere on the machine), this node marked
    dead, or :data:`RAY_CHECK_MISSES` looks in a row without an answer within
    :data:`RAY_CHECK_TIMEOUT_S` (a GCS that got SIGTERM can hang on without answering).
    The API cannot answer without Ray, so serving ends and the reason is returned:
    ``cortx-workflow serve`` then exits non-zero, and a supervisor (systemd, Kubernetes)
    starts it again, rather than the command staying up with its port closed. What is left
    of a local Ray this process started is stopped first (its processes as of the last look:
    a raylet's agents outlive it otherwise). Serve's own restarts of its proxy or replica
    are not Ray going away.

    Args:
        host, port: where the API answers.
        proxy_port: None (the default): Serve's HTTP proxy listens on ``port``. Else the
            proxy's port, when Ray was started with
            :func:`serve_app.ingress.ingress_environment` for ``port`` and the replica takes it.
        resume: called once before serving (``WorkflowClient.resume_unfinished``).
        announce: receives one-line progress messages.
        stop: an event that ends serving (tests); signals end it too.
        check_every_s: seconds between two looks at Ray.

    Returns:
        None after a stop that was asked for; else why Ray is gone (one line).
    """
    warm_hosts(settings, registry, namespace)
    resumed = resume()
    announce(f"resumed {len(resumed)} unfinished run(s)")
    direct = proxy_port is not None
    serve.start(http_options={"host": host, "port": port if proxy_port is None else proxy_port})
    gone = None
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
        misses = 0
        next_check = time.monotonic() + check_every_s
        ray_processes = _descendants()
        try:
            while not done.wait(0.5):
                if time.monotonic() < next_check:
                    continue
                reason = ray_gone()
                misses = misses + 1 if reason is not None else 0
                if reason is not None and (misses >= RAY_CHECK_MISSES or not reason.startswith(_NO_ANSWER)):
                    gone = reason
                    break
                if reason is None:
                    ray_processes = _descendants()
                # After a look without an answer, the next look at once.
                next_check = time.monotonic() + (0.0 if reason is not None else check_every_s)
        except KeyboardInterrupt:
            pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if gone is not None:
            announce(f"Ray is gone ({gone}); the API cannot answer without it: stopping")
            _stop_leftovers(ray_processes)
            return gone
        announce("stopping")
        return None
    finally:
        if gone is None:
            serve.shutdown()  # with Ray gone there is nothing to shut down, and no one to ask


def ray_gone(timeout_s: float = RAY_CHECK_TIMEOUT_S) -> str | None:
    """Why the Ray this process is connected to can no longer serve the API, or None.

    Looks, in order, at: the GCS and raylet processes this process started (a local Ray;
    none for a cluster joined by address), whether Ray answers ``ray.nodes()`` within
    ``timeout_s`` seconds (asked in a daemon thread, so a GCS that hangs cannot hang the
    caller), and whether this node is still alive there.

    Returns:
        None while Ray is there; else one line, e.g. ``"its raylet process (pid 4242)
        exited"`` or ``"no answer from Ray within 5 s"``.
    """
    import ray
    from ray._private import ray_constants, worker

    node = getattr(worker, "_global_node", None)
    started = getattr(node, "all_processes", None) or {}
    for kind in (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET):
        for info in started.get(kind, ()):
            process = getattr(info, "process", None)
            if process is not None and process.poll() is not None:
                return f"its {kind} process (pid {process.pid}) exited"
    answer: list[Any] = []

    def ask() -> None:
        try:
            answer.append(ray.nodes())
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "no answer"
            answer.append(exc)

    thread = threading.Thread(target=ask, name="ray-watchdog", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not answer or isinstance(answer[0], Exception):
        why = f" ({type(answer[0]).__name__})" if answer else ""
        return f"{_NO_ANSWER} from Ray within {timeout_s:g} s{why}"
    here = ray.get_runtime_context().get_node_id()
    for entry in answer[0]:
        if entry.get("NodeID") == here and not entry.get("Alive", True):
            return f"Ray marked this node ({here[:12]}) dead"
    return None


def _descendants() -> list[Any]:
    """This process's descendants now (``psutil.Process`` objects): with a local Ray, its
    GCS, raylet, agents and workers; none for a cluster joined by address."""
    import psutil

    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _stop_leftovers(processes: list[Any], grace_s: float = LEFTOVER_GRACE_S) -> None:
    """SIGTERM, then after ``grace_s`` s SIGKILL, those of ``processes`` still running.

    ``psutil`` checks each one's start time, so a pid reused since the look is not touched.
    """
    import psutil

    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for process in still:
        with contextlib.suppress(psutil.Error):
            process.kill()
