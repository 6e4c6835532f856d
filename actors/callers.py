"""Service callers: the Ray actors that make a shared host's service calls.

A ``service_call``, ``http`` or ``webhook`` attempt is one HTTP request: the work is
waiting on the network. As a Ray task each attempt paid for a task's lease and a worker
process held for the whole call (about 11 ms of CPU per call on the development machine,
``docs/performance.md``; and with ``CORTX_STEP_TASK_NUM_CPUS`` 0.25 only 8 calls ran at
once on two cores). A shared ExecutionHost instead owns ``CORTX_SERVICE_CALLERS`` caller
actors (default 1), each a threaded Ray actor that runs up to
``CORTX_SERVICE_CALL_CONCURRENCY`` calls at once (default 64), one per thread, with the
same code a step task ran (:func:`actors.outbound.perform_call`). An actor call costs
about a third of a task's CPU (0.8 against 2.4 ms for an empty one, measured with
``ray.init`` on two cores).

What stays as it was:

* The work is remote: it runs in the caller's process, never in the host's, so named
  secrets are still read only where the call is made (``docs/security.md``), and callers
  are placed with Ray's ``SPREAD`` strategy across the cluster's nodes.
* A caller that dies (its process killed, its node lost) fails the calls it held as a
  retryable ``task_error``, as a lost task did; Ray restarts it (``max_restarts=-1``) and
  the engine's retry (with the same idempotency key) goes to the restarted caller. Ray's
  own retries are off (``max_task_retries=0``): retries are the engine's.
* The callers are owned by their host: they end with it, and a restarted host starts
  new ones.

What differs: a cancelled attempt (run cancelled, step timeout, a sibling's failure) is
no longer stopped by killing its worker. The host stops waiting at once and asks Ray to
cancel the call, which drops it if it has not started; a call already sent runs on in its
thread until it is answered or its own timeout ends it, and its outcome is discarded.
That is what happens to a request already on the wire either way: the upstream may
have acted on it, which is why every attempt carries the step's idempotency key.

Dedicated hosts (``isolation: dedicated``) keep one Ray task per call: a caller is a
process, and a one-run host that started one per run would pay a process start per run.
"""

from __future__ import annotations

import os
from typing import Any

import ray

__all__ = ["ServiceCaller", "start_callers"]


class ServiceCaller:
    """Makes service call attempts, one per thread (use through Ray: :func:`start_callers`)."""

    def __init__(self) -> None:
        self._node_id = ray.get_runtime_context().get_node_id()

    def call(
        self, call: dict[str, Any], secrets_file: str | None = None, webhook: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One attempt of a ``service_call``, ``http`` or ``webhook`` step.

        Args and result as :func:`actors.tasks.service_call_task`: ``call`` holds the
        keyword arguments of :func:`actors.outbound.perform_call` with secrets still as
        markers, read here from ``secrets_file``; the result is ``perform_call``'s
        (``{"ok": True, "status", "body", "elapsed_ms"}`` or ``{"ok": False, "error",
        "elapsed_ms"}``) plus ``"node_id"``, the hex id of the node this caller runs on.
        Never raises for the call's failure.
        """
        from actors.outbound import perform_call

        result = perform_call(call, secrets_file=secrets_file, webhook=webhook)
        result["node_id"] = self._node_id
        return result

    def where(self) -> dict[str, Any]:
        """``{"pid", "node_id"}``: this caller's process and node."""
        return {"pid": os.getpid(), "node_id": self._node_id}


def start_callers(count: int, concurrency: int) -> list[Any]:
    """Start ``count`` callers owned by the calling process (a host); their Ray handles.

    Args:
        count: how many (``CORTX_SERVICE_CALLERS``); 0 starts none.
        concurrency: calls each runs at once, one thread per call
            (``CORTX_SERVICE_CALL_CONCURRENCY``).

    They reserve no CPU (``num_cpus=0``): the calls wait on the network, and a caller must
    not keep a ``task`` step from being scheduled.
    """
    remote = ray.remote(ServiceCaller)
    return [
        remote.options(
            name=None,
            max_concurrency=concurrency,
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=0,
            scheduling_strategy="SPREAD",
        ).remote()
        for _ in range(count)
    ]
