"""Who listens on the API's port: Serve's HTTP proxy, or the API replica itself (direct ingress).

Ray Serve's default path is client → HTTP proxy actor → replica: every request is parsed
by the proxy, sent to the replica as a Ray actor call, and its answer sent back the same
way. Measured here (docs/performance.md, "HTTP API"), that costs about 8 ms of proxy CPU and
9 ms of replica CPU per request on top of the handler's own work, and under 100 clients it
decided the latency: status p50 15 ms / p99 43 ms at 25 requests a second, 21 / 105 at 50.

With *direct ingress* (Ray Serve 2.60, ``RAY_SERVE_ENABLE_DIRECT_INGRESS``) the ingress
replica runs its own HTTP server and answers on it, without the proxy hop: status p50 5 to
6 ms / p99 11 to 12 ms at the same loads. Ray marks the feature experimental and reads it
from the environment of its processes when they start, so ``cortx-workflow serve`` turns
it on only for the local Ray it starts itself (its processes inherit the CLI's
environment), with one replica taking ``--port``. Serve's proxy still runs, on a free port
of the same host, serving the same app behind the same authentication.
"""

from __future__ import annotations

__all__ = ["direct_ingress_environment"]


def direct_ingress_environment(port: int) -> dict[str, str]:
    """Ray Serve settings that make the API's one replica listen on ``port`` itself.

    Set them in the environment before Ray starts (Serve's controller and replicas read
    them at import).

    Args:
        port: the TCP port the API answers on (1 to 65535).

    Returns:
        ``{"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", ...}``: direct ingress on, the replicas'
        port range exactly ``[port, port + 1)`` (so a second replica could not start: the
        CLI runs one), and no draining pause at shutdown (Ray's default waits 30 s for a load
        balancer to deregister the replica; there is none in front of this one).
    """
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    }
