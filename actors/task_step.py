"""The ``task`` step: one attempt's request, and the call of the function in a worker.

Two halves, both free of Ray so the thread runner and unit tests use them too:

* In the ExecutionActor, :func:`plan_task` renders the step's ``inputs`` once and
  :meth:`TaskPlan.request` makes the :class:`TaskRequest` of each attempt (function, keyword
  arguments, Ray resources).
* In the worker (a Ray task, ``actors.tasks.task_step_task``, or a thread of
  ``actors.runners.ThreadStepRunner``), :func:`perform_task` checks the function against the
  module allowlist *before importing anything* (the second check; validation was the
  first), imports it, calls it with the keyword arguments and returns the outcome as data.

Outcomes (the StepRunner result shape, :class:`actors.scheduler.StepRunner`):

* ``{"ok": True, "value": <JSON value>, "elapsed_ms"}``: the function's return value,
  passed through JSON (a tuple becomes a list);
* ``{"ok": False, "error": {...}}`` with ``kind``:

  - ``task_error``: the function raised; ``exception_type`` (qualified class name),
    ``exception_message`` and ``traceback`` (its last lines) are recorded as text, never as
    a pickled object. Retried per the step's policy (``task_error`` is in the default
    ``retry_on``), the same kind as a task lost with its worker;
  - ``task_refused``: the module is outside ``CORTX_TASK_MODULES`` (``rule``
    ``module_not_allowed``); never retried, nothing was imported;
  - ``task_not_registered``: a registered name no driver registered; never retried;
  - ``task_import``: the module or function cannot be loaded in the worker; never retried;
  - ``invalid_output``: the return value is not JSON; never retried.
"""

from __future__ import annotations

import asyncio
import inspect
import importlib
import json
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dsl.errors import ConfigurationError
from dsl.models import TaskStep
from dsl.secrets import contains_secret
from dsl.task_spec import module_allowed, parse_function_ref

__all__ = ["TaskPlan", "TaskRequest", "perform_task", "plan_task", "resolve_function"]

#: Characters of an exception's message and traceback kept in the step's error.
MAX_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 4000


_ITERATION_INDEX = re.compile(r"\[\d+\]")


def step_task_name(step_key: str) -> str:
    """The Ray task name of a step attempt: ``step <step path>``, loop indices as ``[*]``.

    ``loop[17]/charge`` is named ``step loop[*]/charge``. Ray keeps one series of its
    ``ray_tasks`` metric per distinct task name in every worker that submits tasks, and never
    drops one: a name per run, attempt or item made the host's memory and metrics export grow
    with every step it ever ran (about 25 KB a name; 1 GB over a 40,000-item loop). The name
    therefore has the cardinality of the pack's steps; which run and attempt a task belongs to
    is in the step's logs and events (docs/operations.md, "Ray dashboard").

    Args:
        step_key: the step execution's key (``<step id>`` or ``<loop>[<i>]/<step id>``...).

    Returns:
        The name, e.g. ``"step validate"``.
    """
    return "step " + _ITERATION_INDEX.sub("[*]", step_key)


@dataclass(frozen=True)
class TaskRequest:
    """One attempt of a ``task`` step, fully resolved.

    Attributes:
        function: ``package.module:function`` or a registered name.
        kwargs: the rendered ``inputs``: the function's keyword arguments (JSON values).
        num_cpus: CPUs Ray reserves for the attempt's task.
        num_gpus: GPUs Ray reserves.
        memory: bytes of memory Ray reserves, or None for none.
        execution_id: the run.
        step_key: the step execution.
        attempt: 1-based attempt number.
        idempotency_key: ``<execution_id>/<step_key>``, kept in the checkpoint.
    """

    function: str
    kwargs: dict[str, Any]
    num_cpus: float
    num_gpus: float
    memory: int | None
    execution_id: str
    step_key: str
    attempt: int
    idempotency_key: str

    @property
    def registered(self) -> bool:
        """True when ``function`` is a driver-registered name (not ``module:function``)."""
        return ":" not in self.function

    def ray_options(self) -> dict[str, Any]:
        """Options of the attempt's Ray task: a readable name and the requested resources."""
        options: dict[str, Any] = {
            "name": step_task_name(self.step_key),
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
        }
        if self.memory is not None:
            options["memory"] = self.memory
        return options

    def resources(self) -> str:
        """The requested resources as text, for messages (``num_cpus=2, memory=1048576 bytes``)."""
        parts = [f"num_cpus={self.num_cpus:g}"]
        if self.num_gpus:
            parts.append(f"num_gpus={self.num_gpus:g}")
        if self.memory is not None:
            parts.append(f"memory={self.memory} bytes")
        return ", ".join(parts)


@dataclass(frozen=True)
class TaskPlan:
    """What every attempt of one ``task`` step execution shares (inputs rendered once)."""

    step: TaskStep
    kwargs: dict[str, Any]

    def request(self, *, execution_id: str, step_key: str, attempt: int, idempotency_key: str) -> TaskRequest:
        """The :class:`TaskRequest` of attempt ``attempt``."""
        return TaskRequest(
            function=self.step.function,
            kwargs=self.kwargs,
            num_cpus=self.step.num_cpus,
            num_gpus=self.step.num_gpus,
            memory=self.step.memory,
            execution_id=execution_id,
            step_key=step_key,
            attempt=attempt,
            idempotency_key=idempotency_key,
        )


def plan_task(step: TaskStep, render: Callable[[str], Any]) -> TaskPlan:
    """Render the step's ``inputs`` (``render(field_name)`` renders a field's templates).

    Raises:
        ExpressionError: a template fails (the step fails with kind ``expression``).
        ConfigurationError: the arguments would carry a secret (validation refuses secrets
            in task inputs; this catches a use it cannot see, e.g. a computed key).
    """
    kwargs = render("inputs") if step.inputs else {}
    if contains_secret(kwargs):
        raise ConfigurationError(
            f"steps.{step.id}.inputs", "***", "a task function cannot receive secrets or secret inputs"
        )
    return TaskPlan(step, dict(kwargs))


# --- the worker side ---------------------------------------------------------------------------


def _failure(kind: str, message: str, *, retryable: bool, **detail: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message, "retryable": retryable, "status": None, **detail}}


def resolve_function(function: str, modules: tuple[str, ...]) -> Callable[..., Any] | dict[str, Any]:
    """The callable ``function`` names, or a failure result (see the module docstring).

    The allowlist is checked before ``importlib.import_module``: a refused module's code
    never runs, not even its top level.
    """
    try:
        ref = parse_function_ref(function)
    except ValueError as exc:
        return _failure("task_refused", str(exc), retryable=False, function=function, rule="invalid_reference")
    if ref.module is None:
        return _failure(
            "task_not_registered",
            f"function {function!r} is not registered here; a driver registers it with WorkflowClient.register_task",
            retryable=False,
            function=function,
            rule="not_registered",
        )
    if not module_allowed(ref.module, modules):
        allowed = f"it allows {', '.join(modules)}" if modules else "it is empty, so no module is allowed"
        return _failure(
            "task_refused",
            f"refused to import {ref.module!r} for function {function!r}: the module is outside "
            f"CORTX_TASK_MODULES ({allowed})",
            retryable=False,
            function=function,
            rule="module_not_allowed",
        )
    try:
        module = importlib.import_module(ref.module)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported as data
        return _failure(
            "task_import",
            f"cannot import {ref.module!r} for function {function!r}: {type(exc).__name__}: {str(exc)[:500]}",
            retryable=False,
            function=function,
        )
    target = getattr(module, ref.name, None)
    if target is None or not callable(target):
        return _failure(
            "task_import", f"module {ref.module!r} has no function {ref.name!r}", retryable=False, function=function
        )
    defined_there = getattr(target, "__module__", None) == module.__name__
    if not defined_there and ref.name not in getattr(module, "__all__", ()):
        # An allowed module's imports (`from subprocess import run`) are not its functions.
        return _failure(
            "task_refused",
            f"refused {function!r}: {ref.name!r} is defined in {getattr(target, '__module__', '?')!r}, "
            f"not in {ref.module!r}; only functions defined in an allowed module, or listed in its "
            "__all__, may run",
            retryable=False,
            function=function,
            rule="not_defined_in_module",
        )
    return target  # type: ignore[no-any-return]


def perform_task(
    function: str,
    kwargs: Mapping[str, Any],
    *,
    modules: tuple[str, ...],
    fn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run one attempt of a ``task`` step in this process; never raises for the function's failure.

    Args:
        function: the step's ``function`` (used to find it, and in messages).
        kwargs: keyword arguments (JSON values).
        modules: the allowlist (``Settings.task_modules``), checked before any import.
        fn: the function itself, for a registered name (the caller looked it up); None to
            import ``function``.

    Returns:
        The outcome as in the module docstring. A coroutine function is run to its end
        with ``asyncio.run``.
    """
    started = time.perf_counter()
    if fn is None:
        resolved = resolve_function(function, modules)
        if isinstance(resolved, dict):
            return resolved
        fn = resolved
    try:
        value = fn(**kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    except Exception as exc:  # noqa: BLE001 - the user's failure becomes data
        message = str(exc)
        return _failure(
            "task_error",
            f"function {function!r} raised {type(exc).__name__}: {message[:MAX_MESSAGE_CHARS]}",
            retryable=True,
            function=function,
            exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
            exception_message=message[:MAX_MESSAGE_CHARS],
            traceback="".join(traceback.format_exception(exc))[-MAX_TRACEBACK_CHARS:],
        )
    try:
        value = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return _failure(
            "invalid_output",
            f"function {function!r} returned a {type(value).__name__}, which is not a JSON value: {exc}",
            retryable=False,
            function=function,
        )
    return {"ok": True, "value": value, "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
