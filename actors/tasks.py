"""Ray remote functions that do the work of steps.

Each runs in a Ray worker process, which keeps one pooled HTTP client
(:mod:`actors.http_call`) across the tasks it runs. Ray's own task retries are off
(``max_retries=0``): retries are the engine's, with backoff and an idempotency key, and a
task lost with its worker is reported to the engine as a retryable ``task_error``.
"""

from __future__ import annotations

from typing import Any

import ray

__all__ = ["service_call_task"]


@ray.remote(max_retries=0)
def service_call_task(call: dict[str, Any]) -> dict[str, Any]:
    """One attempt of a ``service_call`` step.

    Args:
        call: keyword arguments of :func:`actors.http_call.call_http` (method, url,
            json_body, headers, timeout_seconds, idempotency_key).

    Returns:
        ``call_http``'s result: ``{"ok": True, "status", "body", "elapsed_ms"}`` or
        ``{"ok": False, "error": {...}, "elapsed_ms"}``; never raises for the call's failure.
    """
    from actors.http_call import call_http

    return call_http(**call)
