"""Who listens on the API's port: Serve's HTTP proxy, or the API replica itself (direct ingress).

Ray Serve's default path is client → HTTP proxy actor → replica: every request is parsed
by the proxy, sent to the replica as a Ray actor call, and its answer sent back the same
way. Measured here (docs/performance.md, "HTTP API"), that costs about 8 ms of proxy CPU and
9 ms of replica CPU per request on top of the handler's own work, and under 100 clients it
decided the latency: status p50 15 ms / p99 43 ms at 25 requests a second, 21 / 105 at 50.

With *direct ingress* (Ray Serve 2.60, ``RAY_SERVE_ENABLE_DIRECT_INGRESS``) the ingress
replica runs its own HTTP server and answers on it, without the proxy hop: status p50 5 to
7 ms / p99 11 to 38 ms at the same loads. It is opt-in (``cortx-workflow serve --ingress
direct``) because Ray marks it experimental and it is easier to knock over: the replica's
socket is bound without ``SO_REUSEADDR``, so after the replica dies or the command stops
with connections open, the port can stay unusable for as long as the kernel keeps those
connections in TIME_WAIT (60 s on Linux); open event streams hold a stop for Serve's
graceful shutdown timeout (20 s). Ray reads the setting from the environment of its
processes when they start, so only the local Ray the command starts itself can have it,
with one replica taking the port. Serve's proxy still runs, on a free port of the same
host, serving the same app behind the same authentication.
"""

from __future__ import annotations

__all__ = ["ingress_environment"]


def ingress_environment(direct_port: int | None) -> dict[str, str]:
    """Ray Serve settings for the local Ray ``cortx-workflow serve`` starts.

    Set them in the environment before Ray starts (Serve's controller and replicas read
    them at import).

    Args:
        direct_port: the TCP port (1 to 65535) the API's one replica listens on itself, or
            None for Serve's proxy (direct ingress off, even if the caller's environment
            turned it on: the command then announces only the ports that listen).

    Returns:
        For a port: direct ingress on; the replicas' port range exactly
        ``[port, port + 1)`` (so a second replica could not start: the command runs one);
        no draining pause at shutdown (Ray's default waits 30 s for a load balancer to
        deregister the replica; there is none in front of this one); and no quarantine of
        the port after a replica dies (Ray's default, 150 s, kept the API down that long,
        the only port being quarantined). For None: direct ingress off. Both turn Serve's
        HAProxy mode off, which would bind the replicas on all interfaces.
    """
    if direct_port is None:
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_port + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }
