"""Ray remote functions that do the work of steps.

Each runs in a Ray worker process, which keeps one pooled HTTP client
(:mod:`actors.http_call`) across the tasks it runs. Ray's own task retries are off
(``max_retries=0``): retries are the engine's, with backoff and an idempotency key, and a
task lost with its worker is reported to the engine as a retryable ``task_error``.
"""

from __future__ import annotations

from typing import Any

import ray

__all__ = ["service_call_task", "task_step_task"]


@ray.remote(max_retries=0)
def service_call_task(
    call: dict[str, Any], secrets_file: str | None = None, webhook: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One attempt of a ``service_call`` or ``webhook`` step.

    Args:
        call: keyword arguments of :func:`actors.http_call.call_http` (method, url,
            json_body, headers, timeout_seconds, idempotency_key), secrets still markers.
        secrets_file: the secrets file (``Settings.secrets_file``); secrets are read here,
            in the task, never in the ExecutionActor (:func:`actors.outbound.perform_call`).
        webhook: ``{"signing_secret": NAME}`` for a webhook delivery, else None.

    Returns:
        ``call_http``'s result: ``{"ok": True, "status", "body", "elapsed_ms"}`` or
        ``{"ok": False, "error": {...}, "elapsed_ms"}``, plus ``"node_id"``: the hex id of
        the Ray node the task ran on (recorded in the attempt's checkpoint, so the step
        history shows where each attempt ran; ``docs/deploy.md``). Never raises for the
        call's failure.
    """
    from actors.outbound import perform_call

    result = perform_call(call, secrets_file=secrets_file, webhook=webhook)
    result["node_id"] = ray.get_runtime_context().get_node_id()
    return result


@ray.remote(max_retries=0)
def task_step_task(
    function: str, kwargs: dict[str, Any], modules: tuple[str, ...], pickled: bytes | None = None
) -> dict[str, Any]:
    """One attempt of a ``task`` step: call a Python function in this worker.

    The caller sets the Ray resources (``num_cpus``, ``num_gpus``, ``memory``) with
    ``.options`` (:meth:`actors.task_step.TaskRequest.ray_options`).

    Args:
        function: ``package.module:function`` or a registered name.
        kwargs: the function's keyword arguments (JSON values).
        modules: the allowlist (``Settings.task_modules``), checked here again before any
            import (defence in depth: validation checked it first).
        pickled: for a registered name, the function cloudpickled by the driver
            (``actors.task_registry``); None for ``module:function``.

    Returns:
        :func:`actors.task_step.perform_task`'s outcome plus ``"node_id"``. Never raises
        for the function's failure: an exception is returned as a ``task_error`` record.
    """
    from actors.task_step import perform_task

    fn = None
    result: dict[str, Any] | None = None
    if pickled is not None:
        from ray import cloudpickle

        try:
            fn = cloudpickle.loads(pickled)
        except Exception as exc:  # noqa: BLE001 - reported as data
            result = {
                "ok": False,
                "error": {
                    "kind": "task_import",
                    "message": f"cannot load registered function {function!r} in the worker: "
                    f"{type(exc).__name__}: {str(exc)[:500]}",
                    "retryable": False,
                    "status": None,
                    "function": function,
                },
            }
    if result is None:
        result = perform_task(function, kwargs, modules=modules, fn=fn)
    result["node_id"] = ray.get_runtime_context().get_node_id()
    return result
