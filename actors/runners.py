"""Step runners that need no Ray: the work of a step in a thread of this process.

:class:`ThreadStepRunner` runs a ``service_call`` attempt in a worker thread of the calling
process. It is the runner of the scheduler's tests and of embedding the engine where no Ray
cluster is wanted; in an ExecutionHost, :class:`actors.host.RayStepRunner` is used instead,
so the work spreads over the cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.http_call import call_http
from actors.scheduler import ServiceRequest

__all__ = ["ThreadStepRunner"]


class ThreadStepRunner:
    """Runs step work in threads (``asyncio.to_thread``); the StepRunner of Ray-less use."""

    async def call_service(self, request: ServiceRequest) -> dict[str, Any]:
        """One service call attempt; returns :func:`actors.http_call.call_http`'s result.

        A cancelled wait leaves the thread to finish its call (threads cannot be killed);
        the call's own timeout bounds it.
        """
        return await asyncio.to_thread(call_http, **request.call_kwargs())
