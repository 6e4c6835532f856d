"""Step runners that need no Ray: the work of a step in a thread of this process.

:class:`ThreadStepRunner` runs a ``service_call`` (or ``task``) attempt in a worker thread of
the calling process. It is the runner of the scheduler's tests and of embedding the engine where no Ray
cluster is wanted; in an ExecutionHost, :class:`actors.host.RayStepRunner` is used instead,
so the work spreads over the cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from actors.outbound import perform_call
from actors.scheduler import ServiceRequest
from actors.task_step import TaskRequest, perform_task

__all__ = ["ThreadStepRunner"]


class ThreadStepRunner:
    """Runs step work in threads (``asyncio.to_thread``); the StepRunner of Ray-less use.

    Args:
        secrets_file: where named secrets are read (``Settings.secrets_file``), or None.
        task_modules: the ``task`` step allowlist (``Settings.task_modules``).
        registered_tasks: functions ``task`` steps may name without a module, by name.
    """

    def __init__(
        self,
        secrets_file: str | None = None,
        task_modules: tuple[str, ...] = (),
        registered_tasks: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self._secrets_file = secrets_file
        self._task_modules = task_modules
        self._registered = dict(registered_tasks or {})

    async def call_service(self, request: ServiceRequest) -> dict[str, Any]:
        """One service call or webhook attempt; returns :func:`actors.outbound.perform_call`'s result.

        A cancelled wait leaves the thread to finish its call (threads cannot be killed);
        the call's own timeout bounds it.
        """
        return await asyncio.to_thread(
            perform_call, request.call_kwargs(), secrets_file=self._secrets_file, webhook=request.webhook
        )

    async def run_task(self, request: TaskRequest) -> dict[str, Any]:
        """One ``task`` attempt in a thread: :func:`actors.task_step.perform_task`'s outcome.

        The same allowlist check, import and error records as in a Ray worker; the Ray
        resources (``num_cpus``, ``num_gpus``, ``memory``) are not applied, and a cancelled
        or timed-out wait leaves the thread to finish the function (threads cannot be killed).
        """
        fn = self._registered.get(request.function) if request.registered else None
        return await asyncio.to_thread(
            perform_task, request.function, request.kwargs, modules=self._task_modules, fn=fn
        )
