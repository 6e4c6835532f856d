"""Service callers (opt-in): Ray actors that make a shared host's service calls.

A ``service_call``, ``http`` or ``webhook`` attempt is one HTTP request: the work is
waiting on the network. As a Ray task (the default) each attempt pays for a task's lease
and holds a worker process for the whole call (8.5 to 10 ms of CPU per call on the
development machine, ``docs/performance.md``; and with ``CORTX_STEP_TASK_NUM_CPUS`` 0.25
only 8 calls run at once on two cores). With ``CORTX_SERVICE_CALLERS`` above 0 a shared
ExecutionHost instead owns that many caller actors, started when the host is created
(``ready`` waits for them, so a deployment's first calls do not pay for a process start),
each a threaded Ray actor that runs up to ``CORTX_SERVICE_CALL_CONCURRENCY`` calls at once
(default 64), one per thread, with the same code a step task runs
(:func:`actors.outbound.perform_call`): about 3 ms of CPU per call, and an empty actor
call costs a third of an empty task (0.8 against 2.4 ms, ``ray.init`` on two cores).

What stays as with tasks:

* The work is remote: it runs in the caller's process, never in the host's, so named
  secrets are still read only where the call is made (``docs/security.md``), and callers
  are placed with Ray's ``SPREAD`` strategy across the cluster's nodes.
* A caller that dies (its process killed, its node lost) fails the calls it held as a
  retryable ``task_error`` (``service caller failed: ActorUnavailableError`` or
  ``ActorDiedError``), as a lost task does; Ray restarts it (``max_restarts=-1``) and the
  engine's retry (with the same idempotency key) goes to the restarted caller. Ray's own
  retries are off (``max_task_retries=0``): retries are the engine's.
* The callers are owned by their host: they end with it, and a restarted host starts
  new ones.

What they give up, and why they are opt-in: a call a caller has started cannot be
stopped from outside. A task is stopped by killing its worker; a threaded actor's thread
cannot be interrupted. So when a run is cancelled or an attempt times out, the host stops
waiting at once and asks Ray to cancel the call: a call still queued behind the caller's
busy threads is dropped (see :data:`CONTROL_GROUP` for what that takes in Ray 2.60), but
a call already started is made and its outcome discarded. And a call's own timeout is per
phase (connect, each read), so an upstream that keeps trickling bytes holds its thread
past the step's timeout, and enough of those starve the host's other calls. Closing that
needs a total deadline on each call (a streamed read that stops at the attempt's
deadline). Ray creates all of a threaded actor's threads when it starts, so the settings
are bounded (:data:`actors.settings.MAX_SERVICE_CALLERS`, ``MAX_SERVICE_CALL_CONCURRENCY``).

Dedicated hosts (``isolation: dedicated``) always use one Ray task per call: a caller is a
process, and a one-run host that started one per run would pay a process start per run.
"""

from __future__ import annotations

import os
from typing import Any

import ray

__all__ = ["ServiceCaller", "start_callers"]


#: The concurrency group of :meth:`ServiceCaller.where`, on its own thread. Having a
#: concurrency group matters beyond that: Ray 2.60 drops a cancelled call still queued at a
#: threaded actor only when the actor has concurrency groups. Without one the queued call
#: was made anyway once a thread was free (``tests/fault/test_caller_crash.py``,
#: ``test_a_cancelled_attempt_queued_at_a_busy_caller_is_not_sent``, fails so).
CONTROL_GROUP = "control"


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

    @ray.method(concurrency_group=CONTROL_GROUP)
    def where(self) -> dict[str, Any]:
        """``{"pid", "node_id"}``: this caller's process and node (answers while every call thread is busy)."""
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
    remote = ray.remote(concurrency_groups={CONTROL_GROUP: 1})(ServiceCaller)
    return [
        remote.options(
            max_concurrency=concurrency,
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=0,
            scheduling_strategy="SPREAD",
        ).remote()
        for _ in range(count)
    ]
