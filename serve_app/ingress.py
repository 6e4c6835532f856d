"""Ray Serve's settings for the API: its data path, and who listens on the API's port.

Ray Serve's default data path costs a lot per request on a small machine: the HTTP proxy
hands every request to the replica as a Ray actor call, the router runs on an event loop
of its own thread in the proxy, and the replica runs the app on a second thread's loop.
Measured here (docs/performance.md, "HTTP latency"), status took p50 15 ms / p99 43 ms at 25
requests a second from 100 clients, 21 / 105 at 50, and execute 28 / 117 at 25.

:data:`DATA_PATH_SETTINGS` are the data-path part of what Ray Serve documents as its
throughput-optimized mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, Ray 2.56 and later): the
proxy reaches the replica over gRPC (the replica's inter-deployment gRPC server, which
Serve starts in every replica anyway), and the proxy's router and the replica's app run on
the process's main event loop. The API is all ``async`` (asyncpg, aiosqlite,
``asyncio.to_thread`` for blocking Ray calls and for pack parsing and validation), so
nothing it does blocks the loop it now shares with Serve's health checks. With them the same loads answer in about half the time
(docs/performance.md, "HTTP latency"). Two parts of that mode are left out on purpose:
direct ingress (below), and its logging (``RAY_SERVE_LOG_TO_STDERR=0`` makes Serve replace
the replica's stderr with a logger, which re-logged the API's own error lines at INFO and
broke up their tracebacks; ``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000`` held request
log lines in memory until a thousand had come, and lost the rest at a stop).

With *direct ingress* (Ray Serve 2.60, ``RAY_SERVE_ENABLE_DIRECT_INGRESS``) the ingress
replica runs its own HTTP server and answers on it, without the proxy hop. It is opt-in
(``cortx-workflow serve --ingress direct``) because Ray marks it experimental and it is
easier to knock over: the replica's socket is bound without ``SO_REUSEADDR``, so after the
replica dies or the command stops with connections open, the port can stay unusable for
as long as the kernel keeps those connections in TIME_WAIT (60 s on Linux); open event
streams hold a stop for Serve's graceful shutdown timeout (20 s). Ray reads the setting
from the environment of its processes when they start, so only the local Ray the command
starts itself can have it, with one replica taking the port. Serve's proxy still runs, on
a free port of the same host, serving the same app behind the same authentication.

Ray reads all of these when its processes start: ``cortx-workflow serve`` sets them for the
local Ray it starts; a cluster sets them before ``ray start`` (``cluster.yaml``,
``deploy/cluster-onprem.yaml``, ``deploy/kuberay/rayservice.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["DATA_PATH_SETTINGS", "ingress_environment"]

#: Ray Serve's data-path settings the API is measured and tested with (see the module
#: docstring). A value the caller's environment already has wins (e.g.
#: ``RAY_SERVE_USE_GRPC_BY_DEFAULT=0`` to compare with Serve's default path).
DATA_PATH_SETTINGS: Final[Mapping[str, str]] = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def ingress_environment(direct_port: int | None, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """Ray Serve settings for the local Ray ``cortx-workflow serve`` starts.

    Set them in the environment before Ray starts (Serve's controller, proxy and replicas
    read them at import).

    Args:
        direct_port: the TCP port (1 to 65535) the API's one replica listens on itself, or
            None for Serve's proxy (direct ingress off, even if the caller's environment
            turned it on: the command then announces only the ports that listen).
        inherited: the environment the settings are added to (``os.environ``); those of
            :data:`DATA_PATH_SETTINGS` it already has are left out, so its values stay.

    Returns:
        The :data:`DATA_PATH_SETTINGS` not in ``inherited``, and: for a port, direct
        ingress on; the replicas' port range exactly ``[port, port + 1)`` (so a second
        replica could not start: the command runs one); no draining pause at shutdown
        (Ray's default waits 30 s for a load balancer to deregister the replica; there is
        none in front of this one); and no quarantine of the port after a replica dies
        (Ray's default, 150 s, kept the API down that long, the only port being
        quarantined). For None: direct ingress off. Both turn Serve's HAProxy mode off,
        which would bind the replicas on all interfaces.
    """
    inherited = inherited or {}
    settings = {name: value for name, value in DATA_PATH_SETTINGS.items() if name not in inherited}
    if direct_port is None:
        return {**settings, "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        **settings,
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_port + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }
