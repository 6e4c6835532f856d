"""The scheduler: drives one run's step graph. Plain asyncio; no Ray, no database.

The :class:`~actors.execution.ExecutionActor` is a thin shell around a :class:`Scheduler`
(house style §15): the scheduler decides what runs when, and reaches the world through two
seams given to it, a :class:`StepRunner` (does a step's work: a service call, a Python task) and a
:class:`Journal` (records that a step started and ended: checkpoints and events).

Rules it applies (FDD §2, §7, §8):

* Steps of one list run in dependency order; steps with no dependency between them run
  concurrently. Work steps in flight at once are capped at ``MAX_PARALLEL_STEPS`` per run.
* ``condition``, ``loop`` and ``parallel`` are control steps evaluated here, without a task.
* A step fails its list, which cancels its running siblings and fails the enclosing step,
  up to the run (error propagation, FDD §2.3). A skipped step (the branch not taken)
  counts as finished for anything that depends on it.
* A failing work step is retried per its retry policy, else ``options.max_retries``, else
  its service's ``retry`` in the registry, else
  ``DEFAULT_RETRY_COUNT`` retries, with backoff (FDD §8.1). Which errors are retried is the
  policy's ``retry_on``; a 4xx answer is not retried unless asked.
* Resume is replay: a work step whose completed checkpoint exists returns its stored
  outputs without running; control steps are evaluated again, which is deterministic
  because they read only inputs and checkpointed outputs. The execution context is rebuilt
  the same way: each completed step's ``set_context`` is applied again, at the same point. Failed attempts already recorded
  count against the step's ``max_attempts``.

Step keys identify one execution of one step: the step id, prefixed inside loops by the
loop id and iteration (``process-items[3]/validate-item``). The idempotency key of a step's
outbound call is ``<execution_id>/<step_key>``: the same on every attempt and resume.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from actors.call_plan import plan_call
from actors.egress import EgressPolicy
from actors.http_step import http_outbound, http_result, plan_http_call
from actors.logs import attempt_var, step_key_var
from actors.webhooks import webhook_outbound
from actors.registry import ServiceRegistry
from actors.task_step import TaskPlan, TaskRequest, plan_task
from actors.tracing import TRACEPARENT, format_traceparent, new_span_id, trace_id_for
from dsl.errors import ConfigurationError, ExpressionError
from dsl.expressions import Expression, parse_expression
from dsl.models import (
    ConditionStep,
    EmitStep,
    HttpStep,
    LoopStep,
    ParallelStep,
    RetryPolicy,
    ServiceCallStep,
    Step,
    SwitchStep,
    TaskStep,
    WebhookStep,
    WorkflowPack,
)
from dsl.secrets import SecretRef, contains_secret, secret_names
from dsl.state import ExecutionStatus, StepStatus
from dsl.templates import Template, compile_template
from dsl.validation import unstorable_reason
from persistence.records import StepCheckpoint

__all__ = ["Journal", "RunOutcome", "Scheduler", "ServiceRequest", "StepFailure", "StepRunner"]


@dataclass(frozen=True)
class ServiceRequest:
    """One attempt of a ``service_call`` step, fully resolved.

    Attributes:
        method: HTTP method.
        url: absolute URL (registry base URL joined with the endpoint).
        json_body: request body (rendered ``inputs``), or None.
        headers: registry headers plus the step's rendered headers.
        timeout_seconds: per-call timeout, in s.
        idempotency_key: ``<execution_id>/<step_key>``, sent as ``Idempotency-Key``.
        execution_id: the run.
        step_key: the step execution.
        attempt: 1-based attempt number.
        webhook: ``{"signing_secret": NAME}`` for a ``webhook`` step (signed in the step
            task, ``actors.webhooks``), else None. ``url``, header values and the body may
            hold the secret markers of :mod:`dsl.secrets`; only the step task resolves them.
        outbound: for an ``http`` step, ``{"policy": EgressPolicy, "expected_status": [...]}``
            (``actors.http_step``); None for trusted registry services. Every request also
            carries a W3C ``traceparent`` header: the run's trace, a new span per attempt.
    """

    method: str
    url: str
    json_body: Any
    headers: dict[str, str]
    timeout_seconds: float
    idempotency_key: str
    execution_id: str
    step_key: str
    attempt: int
    webhook: dict[str, Any] | None = None
    outbound: dict[str, Any] | None = None

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`actors.http_call.call_http`."""
        return {
            "method": self.method,
            "url": self.url,
            "json_body": self.json_body,
            "headers": self.headers,
            "timeout_seconds": self.timeout_seconds,
            "idempotency_key": self.idempotency_key,
            # An http step's URL is untrusted: policy and expected statuses (actors.http_step).
            **({"outbound": self.outbound} if self.outbound is not None else {}),
        }


class StepRunner(Protocol):
    """Does the work of a step attempt. Never raises for the work's own failure."""

    async def call_service(self, request: ServiceRequest) -> dict[str, Any]:
        """Return ``{"ok": True, "status", "body"}`` or ``{"ok": False, "error": {...}}``.

        Either may carry ``"node_id"``: the Ray node the work ran on, kept in the checkpoint.
        """
        ...

    async def run_task(self, request: TaskRequest) -> dict[str, Any]:
        """Run one ``task`` attempt: ``{"ok": True, "value"}`` or ``{"ok": False, "error"}``
        (:mod:`actors.task_step`); may carry ``"node_id"`` too. Cancelling the wait must stop
        the work where it can (``ray.cancel``).
        """
        ...


class Journal(Protocol):
    """Where the scheduler records progress (checkpoints, events)."""

    async def step_started(self, step_key: str, step: Step, attempt: int) -> None:
        """A step (attempt) is about to run."""
        ...

    async def step_ended(
        self,
        checkpoint: StepCheckpoint,
        *,
        completed_step: str | None,
        context: dict[str, Any] | None = None,
        emitted: list[dict[str, Any]] | None = None,
    ) -> None:
        """A step attempt ended; ``completed_step`` is its key when the step completed.

        ``completed_step`` is None for a step inside a loop iteration even when it
        completed: the run's ``completed_steps`` lists the pack's steps outside loop
        iterations, at most once each (docs/api.md, §3.2), so that the status record and the
        write behind every checkpoint stay the size of the pack, not of the items.

        ``emitted`` (passed only by ``emit`` steps): the custom events ``{"event_type",
        "data"}`` to store with the checkpoint, in the same transaction.

        ``context`` is the execution context after the step, when the step changed it
        (written in the same transaction as the checkpoint).
        """
        ...

    async def step_retrying(self, step_key: str, attempt: int, delay_ms: int, error: Mapping[str, Any]) -> None:
        """Attempt ``attempt`` failed and the step will run again after ``delay_ms``."""
        ...


class StepFailure(Exception):
    """A step failed for good; ``error`` is the record (step, step_key, kind, message, attempts)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: status, outputs (completed) or error (failed)."""

    status: ExecutionStatus
    outputs: dict[str, Any] | None = None
    error: str | None = None
    error_detail: dict[str, Any] | None = None


@dataclass
class _Frame:
    """What expressions in one list of steps can see: step results and loop variables."""

    steps: dict[str, dict[str, Any]]
    variables: dict[str, Any] = field(default_factory=dict)
    prefix: str = ""

    def child(self, prefix: str | None = None, variables: Mapping[str, Any] | None = None) -> _Frame:
        merged = dict(self.variables)
        merged.update(variables or {})
        return _Frame(dict(self.steps), merged, self.prefix if prefix is None else prefix)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Scheduler:
    """Runs one execution of a pack to its end.

    Args:
        pack: the validated pack.
        execution_id: the run's id.
        inputs: run inputs (already validated against the pack's schema).
        runner: does step work.
        journal: records progress.
        registry: resolves service names to URLs.
        max_parallel_steps: work steps in flight at once (FDD §6 ``MAX_PARALLEL_STEPS``).
        default_retry_count: retries for steps without a policy when ``options`` has no
            ``max_retries`` (FDD §6 ``DEFAULT_RETRY_COUNT``).
        timeout_seconds: run timeout in s (``options.timeout_seconds`` or
            ``WORKFLOW_TIMEOUT_SECONDS``).
        max_retries: ``options.max_retries`` of the execute request, or None.
        max_loop_iterations: bound of loops without ``max_iterations``
            (``CORTX_MAX_LOOP_ITERATIONS``).
        checkpoints: checkpoints of an earlier incarnation of this run, for resume.
        context: the shared execution context (FDD §2.2).
        sleep: coroutine used for backoff delays (s).
        rand: source of jitter in [0, 1).
        egress_policy: what URLs of ``http`` steps may reach (``actors.egress``); the
            default allows none.
    """

    def __init__(
        self,
        pack: WorkflowPack,
        *,
        execution_id: str,
        inputs: Mapping[str, Any],
        runner: StepRunner,
        journal: Journal,
        registry: ServiceRegistry,
        max_parallel_steps: int = 10,
        default_retry_count: int = 3,
        timeout_seconds: float = 300.0,
        max_retries: int | None = None,
        max_loop_iterations: int = 100_000,
        checkpoints: list[StepCheckpoint] | tuple[StepCheckpoint, ...] = (),
        context: Mapping[str, Any] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        egress_policy: EgressPolicy | None = None,
    ) -> None:
        self.pack = pack
        self.execution_id = execution_id
        self.inputs = dict(inputs)
        self.context = dict(context or {})
        self._runner = runner
        self._journal = journal
        self._registry = registry
        self._slots = asyncio.Semaphore(max_parallel_steps)
        self._default_retries = default_retry_count if max_retries is None else max_retries
        self._run_sets_retries = max_retries is not None  # options.max_retries beats service defaults
        self._timeout_seconds = timeout_seconds
        self._max_loop_iterations = max_loop_iterations
        self._sleep = sleep
        self._rand = rand
        self._completed: dict[str, StepCheckpoint] = {}
        self._failed_attempts: dict[str, int] = {}
        for cp in checkpoints:
            if cp.status == StepStatus.COMPLETED.value:
                self._completed[cp.step_key] = cp
            elif cp.status == StepStatus.FAILED.value:
                self._failed_attempts[cp.step_key] = max(self._failed_attempts.get(cp.step_key, 0), cp.attempt)
        self._sequence = 0
        self._expressions: dict[str, Expression] = {}
        self._templates: dict[tuple[int, str], Template] = {}
        self.root = _Frame({})
        # `${ secrets.NAME }` renders as a marker; the step task reads the value (dsl.secrets).
        self._secrets = {name: SecretRef(name) for name in secret_names(pack)}
        self._egress = egress_policy or EgressPolicy()
        self._trace_id = trace_id_for(execution_id)  # one W3C trace per run (actors.tracing)

    # --- entry point ----------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """Run the pack; return the outcome. Cancellation of the calling task propagates."""
        try:
            async with asyncio.timeout(self._timeout_seconds) as deadline:
                try:
                    await self._run_block(self.pack.steps, self.root)
                except StepFailure as failure:
                    error = failure.error
                    if self.pack.on_error is not None and self.pack.on_error.compensate:
                        errors = await self._compensate(self.pack.on_error.compensate, self.root, error)
                        if errors:
                            error = {**error, "compensation_errors": error.get("compensation_errors", []) + errors}
                    return self._failed(error)
        except TimeoutError:
            if not deadline.expired():
                raise
            return self._failed(
                {
                    "step": None,
                    "kind": "timeout",
                    "message": f"execution timed out after {self._timeout_seconds:g} s",
                    "retryable": False,
                }
            )
        try:
            outputs = self._template(self.pack, "outputs").render(self._scope(self.root)) if self.pack.outputs else {}
        except ExpressionError as exc:
            return self._failed({"step": None, "kind": "expression", "message": f"pack outputs: {exc}"})
        if contains_secret(outputs):
            return self._failed({"step": None, "kind": "invalid_output", "message": "pack outputs may not hold a secret"})
        return RunOutcome(ExecutionStatus.COMPLETED, outputs=outputs)

    @staticmethod
    def _failed(error: dict[str, Any]) -> RunOutcome:
        step = error.get("step")
        attempts = error.get("attempts")
        if step:
            tries = f" after {attempts} attempt(s)" if attempts else ""
            message = f"step {step!r} failed{tries}: {error.get('message')}"
        else:
            message = str(error.get("message"))
        fallback = error.get("fallback_error")
        if fallback:
            message += f"; its fallback step {fallback.get('step')!r} failed too: {fallback.get('message')}"
        for other in error.get("compensation_errors") or ():
            message += f"; compensation step {other.get('step')!r} failed: {other.get('message')}"
        return RunOutcome(ExecutionStatus.FAILED, error=message, error_detail=error)

    # --- graph ----------------------------------------------------------------------------

    async def _run_block(self, steps: list[Step], frame: _Frame) -> None:
        """Run sibling steps in dependency order, independent ones concurrently; fail fast."""
        pending = list(steps)
        finished: set[str] = set()
        running: dict[asyncio.Task[None], Step] = {}
        try:
            while pending or running:
                ready = [s for s in pending if all(d in finished for d in s.dependencies)]
                for step in ready:
                    pending.remove(step)
                    running[asyncio.ensure_future(self._run_step(step, frame))] = step
                if not running:
                    # Validation rules this out; guard against a hang all the same.
                    ids = ", ".join(s.id for s in pending)
                    raise StepFailure({"step": pending[0].id, "kind": "internal", "message": f"unreachable steps: {ids}"})
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    task.result()
                    finished.add(step.id)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _run_step(self, step: Step, frame: _Frame) -> None:
        """Run one step with its error handling: fallback, then compensation, then propagation."""
        key = frame.prefix + step.id
        try:
            if isinstance(step, (ServiceCallStep, WebhookStep, HttpStep, TaskStep)):
                outputs = await self._service_call(step, frame, key)
            else:
                outputs = await self._control_step(step, frame, key)
        except StepFailure as failure:
            handler = step.on_error
            if handler is None:
                raise
            error = failure.error
            if handler.fallback:
                try:
                    outputs = await self._fallback(step, frame, key, error)
                except StepFailure as fallback_failure:
                    error = {**error, "fallback_error": fallback_failure.error}
                else:
                    self._set(frame, step.id, StepStatus.COMPLETED, outputs, error, recovered_by="fallback")
                    return
            if handler.compensate:
                errors = await self._compensate(handler.compensate, frame, error)
                if errors:
                    error = {**error, "compensation_errors": errors}
            if handler.propagate:
                raise StepFailure(error) from None
            self._set(frame, step.id, StepStatus.FAILED, None, error)
            return
        done = self._completed.get(key)
        cause = (done.error or {}).get("cause") if done is not None else None
        if cause is not None:
            # Replayed from a checkpoint of a step that a fallback recovered: keep its error visible.
            self._set(frame, step.id, StepStatus.COMPLETED, outputs, cause, recovered_by="fallback")
        else:
            self._set(frame, step.id, StepStatus.COMPLETED, outputs, None)

    def _set(
        self, frame: _Frame, step_id: str, status: StepStatus, outputs: Any, error: Any, **extra: Any
    ) -> None:
        self._sequence += 1
        frame.steps[step_id] = {"status": status.value, "outputs": outputs, "error": error, "seq": self._sequence, **extra}

    async def _fallback(self, step: Step, frame: _Frame, key: str, error: dict[str, Any]) -> Any:
        """Run the fallback steps of ``step``; return the last one's outputs (FDD §8.2)."""
        assert step.on_error is not None
        started = _now()
        child = frame.child(variables={"error": error})
        child.steps[step.id] = {"status": StepStatus.FAILED.value, "outputs": None, "error": error}
        await self._run_block(step.on_error.fallback, child)
        for fallback_step in step.on_error.fallback:
            frame.steps[fallback_step.id] = child.steps[fallback_step.id]
        outputs = child.steps[step.on_error.fallback[-1].id]["outputs"]
        # The step's record: completed, one attempt after its failed ones, recovered by fallback.
        attempt = int(error.get("attempts") or 1) + 1
        recovered = {"kind": "recovered_by_fallback", "cause": error}
        await self._record(step, key, attempt, StepStatus.COMPLETED, outputs, recovered, started)
        return outputs

    async def _compensate(self, steps: list[Step], frame: _Frame, error: dict[str, Any]) -> list[dict[str, Any]]:
        """Run compensation steps one at a time; return the errors of those that failed (FDD §8.3).

        Entries with ``compensates: X`` run only if X completed, latest-completed first; the
        entries without it follow in the order written.
        """
        def completed_seq(target: str) -> int | None:
            entry = frame.steps.get(target)
            return entry.get("seq") if entry and entry.get("status") == StepStatus.COMPLETED.value else None

        targeted = [s for s in steps if s.compensates is not None and completed_seq(s.compensates) is not None]
        targeted.sort(key=lambda s: -(completed_seq(s.compensates or "") or 0))
        child = frame.child(variables={"error": error})
        errors: list[dict[str, Any]] = []
        for compensation in targeted + [s for s in steps if s.compensates is None]:
            try:
                await self._run_step(compensation, child)
            except StepFailure as failure:
                errors.append(failure.error)
        return errors

    # --- control steps --------------------------------------------------------------------

    async def _control_step(self, step: Step, frame: _Frame, key: str) -> Any:
        started = _now()
        await self._journal.step_started(key, step, 1)
        try:
            if isinstance(step, ConditionStep):
                raw = await self._condition(step, frame)
            elif isinstance(step, SwitchStep):
                raw = await self._switch(step, frame)
            elif isinstance(step, LoopStep):
                raw = await self._loop(step, frame, key)
            elif isinstance(step, ParallelStep):
                child = frame.child()
                await self._run_block(step.steps, child)
                frame.steps.update(child.steps)
                raw = {s.id: child.steps[s.id]["outputs"] for s in step.steps}
            elif isinstance(step, EmitStep):
                raw = self._emit(step, frame)
            else:  # pragma: no cover - the Step union is closed
                raise StepFailure({"step": step.id, "kind": "internal", "message": f"unknown step type {step.type}"})
            outputs = self._map_outputs(step, frame, raw, {})
            changed = self._apply_set_context(step, frame, outputs)
        except _StepError as exc:
            error = {"step": step.id, "step_key": key, "kind": exc.kind, "message": exc.message, "attempts": 1}
            await self._record(step, key, 1, StepStatus.FAILED, None, error, started)
            raise StepFailure(error) from None
        if key not in self._completed:
            # An emit step's event goes to the journal with its checkpoint (one transaction).
            emitted = raw if isinstance(step, EmitStep) else None
            await self._record(
                step, key, 1, StepStatus.COMPLETED, outputs, None, started, context_changed=changed, emitted=emitted
            )
        return outputs

    def _emit(self, step: EmitStep, frame: _Frame) -> dict[str, Any]:
        """The custom event of an emit step: ``{"event_type", "data"}`` with ``data`` rendered."""
        try:
            data = self._template(step, "data").render(self._scope(frame))
        except ExpressionError as exc:
            raise _StepError("expression", f"data of step {step.id!r}: {exc}") from None
        _check_storable(f"data of step {step.id!r}", data)
        return {"event_type": step.event_type, "data": data}

    async def _condition(self, step: ConditionStep, frame: _Frame) -> dict[str, Any]:
        value = self._evaluate(step.condition, frame, f"condition of step {step.id!r}")
        if not isinstance(value, bool):
            raise _StepError(
                "expression",
                f"condition `{step.condition}` of step {step.id!r} must be true or false, "
                f"got {_describe(value)}",
            )
        taken, other = (step.then, step.else_) if value else (step.else_, step.then)
        child = frame.child()
        await self._run_block(taken, child)
        frame.steps.update(child.steps)
        for skipped in other:
            frame.steps.setdefault(skipped.id, {"status": StepStatus.SKIPPED.value, "outputs": None, "error": None})
        return {"branch": "then" if value else "else", "value": value}

    async def _switch(self, step: SwitchStep, frame: _Frame) -> dict[str, Any]:
        chosen: int | None = None
        for index, case in enumerate(step.cases):
            value = self._evaluate(case.when, frame, f"case {index} of step {step.id!r}")
            if not isinstance(value, bool):
                raise _StepError(
                    "expression",
                    f"case {index} `{case.when}` of step {step.id!r} must be true or false, got {_describe(value)}",
                )
            if value:
                chosen = index
                break
        taken = step.default if chosen is None else step.cases[chosen].steps
        child = frame.child()
        await self._run_block(taken, child)
        frame.steps.update(child.steps)
        for _, branch in step.children():
            if branch is not taken:
                for skipped in branch:
                    frame.steps.setdefault(skipped.id, {"status": StepStatus.SKIPPED.value, "outputs": None, "error": None})
        return {"case": "default" if chosen is None else chosen}

    async def _while(self, step: LoopStep, frame: _Frame, key: str, bound: int) -> list[Any]:
        assert step.condition is not None
        results: list[Any] = []
        previous: dict[str, dict[str, Any]] = {}
        while True:
            scope_frame = _Frame({**frame.steps, **previous}, {**frame.variables, step.index_var: len(results)})
            value = self._evaluate(step.condition, scope_frame, f"condition of loop {step.id!r}")
            if not isinstance(value, bool):
                raise _StepError(
                    "expression", f"condition `{step.condition}` of loop {step.id!r} must be true or false, got {_describe(value)}"
                )
            if not value:
                return results
            if len(results) >= bound:
                raise _StepError(
                    "max_iterations", f"loop {step.id!r} still running after max_iterations {bound} iterations"
                )
            index = len(results)
            child = _Frame({**frame.steps, **previous}, {**frame.variables, step.index_var: index}, f"{key}[{index}]/")
            await self._run_block(step.steps, child)
            previous = {s.id: child.steps[s.id] for s in step.steps}
            results.append({s.id: child.steps[s.id]["outputs"] for s in step.steps})

    async def _loop(self, step: LoopStep, frame: _Frame, key: str) -> list[Any]:
        bound = self._max_loop_iterations if step.max_iterations is None else step.max_iterations
        if step.condition is not None:
            return await self._while(step, frame, key, bound)
        assert step.collection is not None
        items = self._evaluate(step.collection, frame, f"collection of step {step.id!r}")
        if not isinstance(items, list):
            raise _StepError(
                "expression", f"collection `{step.collection}` of step {step.id!r} must be a list, got {_describe(items)}"
            )
        if len(items) > bound:
            raise _StepError(
                "max_iterations", f"loop {step.id!r} has {len(items)} items, more than max_iterations {bound}"
            )
        results: list[Any] = [None] * len(items)

        async def iteration(index: int) -> None:
            child = frame.child(
                prefix=f"{key}[{index}]/", variables={step.item_var: items[index], step.index_var: index}
            )
            await self._run_block(step.steps, child)
            results[index] = {s.id: child.steps[s.id]["outputs"] for s in step.steps}

        width = step.max_concurrency or 1
        if width == 1:
            for index in range(len(items)):
                await iteration(index)
        else:
            # `width` workers take the indexes in order: memory stays flat in the item count
            # (no task per item waiting for a slot); the first failure stops them all.
            indexes = iter(range(len(items)))

            async def worker() -> None:
                for index in indexes:
                    await iteration(index)

            tasks = [asyncio.ensure_future(worker()) for _ in range(min(width, len(items)))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return results

    # --- work steps -----------------------------------------------------------------------

    async def _service_call(
        self, step: ServiceCallStep | WebhookStep | HttpStep | TaskStep, frame: _Frame, key: str
    ) -> Any:
        done = self._completed.get(key)
        if done is not None:
            # Replay: the stored outputs, and the context changes they made, as the first time.
            self._apply_set_context(step, frame, done.outputs)
            return done.outputs
        scope = self._scope(frame)
        attempt = self._failed_attempts.get(key, 0) + 1
        policy = self._policy(step)
        started = _now()
        call: Any
        try:
            if isinstance(step, TaskStep):
                call = plan_task(step, lambda name: self._template(step, name).render(scope))
            elif isinstance(step, HttpStep):
                call = plan_http_call(step, lambda name: self._template(step, name).render(scope))
            else:
                call = plan_call(step, lambda name: self._template(step, name).render(scope), self._registry)
        except (ExpressionError, ConfigurationError) as exc:
            kind = "expression" if isinstance(exc, ExpressionError) else "configuration"
            error = {"step": step.id, "step_key": key, "kind": kind, "message": str(exc), "attempts": attempt}
            await self._record(step, key, attempt, StepStatus.FAILED, None, error, started)
            raise StepFailure(error) from None
        idempotency_key = f"{self.execution_id}/{key}"
        while True:
            if attempt > policy.max_attempts:
                error = {
                    "step": step.id,
                    "step_key": key,
                    "kind": "attempts_exhausted",
                    "message": f"all {policy.max_attempts} attempts were used before the run resumed",
                    "attempts": attempt - 1,
                }
                raise StepFailure(error)
            step_key_var.set(key)
            attempt_var.set(attempt)
            await self._journal.step_started(key, step, attempt)
            started = _now()
            request: ServiceRequest | TaskRequest
            # A task step's attempt is a Python function on the cluster (actors.task_step).
            request = call.request(
                execution_id=self.execution_id, step_key=key, attempt=attempt, idempotency_key=idempotency_key
            ) if isinstance(call, TaskPlan) else ServiceRequest(
                method=call.method,
                url=call.url,  # type: ignore[arg-type]  # text, or SecretText the step task completes
                json_body=call.body,
                # Each attempt is a new span of the run's trace.
                headers={**call.headers, TRACEPARENT: format_traceparent(self._trace_id, new_span_id())},
                timeout_seconds=min(call.timeout_seconds, step.timeout_seconds or call.timeout_seconds),
                webhook=call.webhook,
                outbound=(
                    http_outbound(step, self._egress) if isinstance(step, HttpStep)
                    # A webhook URL comes from the pack too: the same egress guard (actors.webhooks).
                    else webhook_outbound(self._egress) if isinstance(step, WebhookStep) else None
                ),
                idempotency_key=idempotency_key,
                execution_id=self.execution_id,
                step_key=key,
                attempt=attempt,
            )
            async with self._slots:
                result = await self._attempt(request, step.timeout_seconds)
            node_id = result.get("node_id")
            if result.get("ok"):
                response = {"status": result.get("status"), "body": result.get("body")}
                raw = result.get("body")
                if isinstance(step, HttpStep):
                    raw = response = http_result(result)  # status, headers subset, body
                elif isinstance(step, TaskStep):
                    raw = response = result.get("value")  # the function's return value
                try:
                    outputs = self._map_outputs(step, frame, raw, {"response": response})
                    changed = self._apply_set_context(step, frame, outputs)
                except _StepError as exc:
                    error = {"step": step.id, "step_key": key, "kind": exc.kind, "message": exc.message, "attempts": attempt}
                    await self._record(
                        step, key, attempt, StepStatus.FAILED, None, error, started, idempotency_key, node_id=node_id
                    )
                    raise StepFailure(error) from None
                await self._record(
                    step, key, attempt, StepStatus.COMPLETED, outputs, None, started, idempotency_key,
                    context_changed=changed, node_id=node_id,
                )
                return outputs
            error = dict(result.get("error") or {"kind": "internal", "message": "no result"})
            will_retry = attempt < policy.max_attempts and _retryable(error, policy)
            error.update(step=step.id, step_key=key, attempts=attempt, will_retry=will_retry)
            await self._record(
                step, key, attempt, StepStatus.FAILED, None, error, started, idempotency_key, node_id=node_id
            )
            if not will_retry:
                raise StepFailure(error)
            delay_ms = self._delay_ms(policy, attempt, error.get("retry_after_s"))
            await self._journal.step_retrying(key, attempt, delay_ms, error)
            await self._sleep(delay_ms / 1000)
            attempt += 1

    async def _attempt(self, request: ServiceRequest | TaskRequest, timeout_seconds: float | None) -> dict[str, Any]:
        """One call through the runner; the step timeout is enforced here, outside the task."""
        work = (
            self._runner.run_task(request) if isinstance(request, TaskRequest) else self._runner.call_service(request)
        )
        if timeout_seconds is None:
            return await work
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result and
            # drops a cancel that lands in the tick its call completes, so a cancelled run
            # went on retrying.
            async with asyncio.timeout(timeout_seconds):
                return await work
        except TimeoutError:
            # A task whose resources no node has stays pending: say what it asked for.
            asked = f" (the task asked for {request.resources()})" if isinstance(request, TaskRequest) else ""
            return {
                "ok": False,
                "error": {
                    "kind": "timeout",
                    "message": f"step timed out after {timeout_seconds:g} s{asked}",
                    "retryable": True,
                    "status": None,
                },
            }

    def _policy(self, step: Step) -> RetryPolicy:
        if step.on_error is not None and step.on_error.retry is not None:
            return step.on_error.retry
        if isinstance(step, ServiceCallStep) and not self._run_sets_retries:
            # The service's own defaults (the registry's `retry`) before the engine's.
            policy = self._registry.retry_policy(step.service)
            if policy is not None:
                return policy
        return RetryPolicy(max_attempts=self._default_retries + 1)

    def _delay_ms(self, policy: RetryPolicy, attempt: int, retry_after_s: Any) -> int:
        delay = policy.delay_ms(attempt)
        if policy.jitter:
            delay = int(delay * (1 - policy.jitter * self._rand()))
        if isinstance(retry_after_s, (int, float)) and retry_after_s > 0:
            # The callee asked for a pause; honour it, within the policy's cap.
            delay = max(delay, min(int(retry_after_s * 1000), policy.max_delay_ms))
        return delay

    # --- helpers --------------------------------------------------------------------------

    async def _record(
        self,
        step: Step,
        key: str,
        attempt: int,
        status: StepStatus,
        outputs: Any,
        error: dict[str, Any] | None,
        started: datetime,
        idempotency_key: str | None = None,
        *,
        context_changed: bool = False,
        node_id: str | None = None,
        emitted: dict[str, Any] | None = None,
    ) -> None:
        # node_id: the Ray node a work step's attempt ran on; None for control steps (they
        # run in the ExecutionActor) and for attempts whose task was lost or timed out.
        checkpoint = StepCheckpoint(
            execution_id=self.execution_id,
            step_key=key,
            attempt=attempt,
            step_id=step.id,
            step_type=step.type,
            status=status.value,
            outputs=outputs,
            error=error,
            idempotency_key=idempotency_key,
            started_at=started,
            ended_at=_now(),
            node_id=node_id,
        )
        completed = key if status is StepStatus.COMPLETED else None
        listed = completed if completed is not None and "/" not in key else None  # not a loop iteration's step
        context = dict(self.context) if context_changed else None
        if emitted is not None:  # only journals that run emit steps need to take ``emitted``
            await self._journal.step_ended(checkpoint, completed_step=listed, context=context, emitted=[emitted])
        else:
            await self._journal.step_ended(checkpoint, completed_step=listed, context=context)
        if completed:
            self._completed[key] = checkpoint

    def _scope(self, frame: _Frame, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        scope = {
            "inputs": self.inputs, "context": self.context, "steps": frame.steps, "secrets": self._secrets, **frame.variables
        }
        if extra:
            scope.update(extra)
        return scope

    def _expression(self, text: str) -> Expression:
        expr = self._expressions.get(text)
        if expr is None:
            expr = self._expressions[text] = parse_expression(text)
        return expr

    def _template(self, owner: Any, field_name: str) -> Template:
        cache_key = (id(owner), field_name)
        template = self._templates.get(cache_key)
        if template is None:
            template = self._templates[cache_key] = compile_template(getattr(owner, field_name))
        return template

    def _evaluate(self, text: str, frame: _Frame, what: str) -> Any:
        try:
            return self._expression(text).evaluate(self._scope(frame))
        except ExpressionError as exc:
            raise _StepError("expression", f"{what}: {exc}") from None

    def _apply_set_context(self, step: Step, frame: _Frame, outputs: Any) -> bool:
        """Evaluate ``set_context`` (with ``outputs`` in scope) into the context; True if it set any."""
        if not step.set_context:
            return False
        try:
            values = self._template(step, "set_context").render(self._scope(frame, {"outputs": outputs}))
        except ExpressionError as exc:
            raise _StepError("expression", f"set_context of step {step.id!r}: {exc}") from None
        _check_storable(f"set_context of step {step.id!r}", values)
        self.context.update(values)
        return True

    def _map_outputs(self, step: Step, frame: _Frame, raw: Any, extra: Mapping[str, Any]) -> Any:
        if not step.outputs:
            outputs = raw
        else:
            try:
                outputs = self._template(step, "outputs").render(self._scope(frame, {"result": raw, **extra}))
            except ExpressionError as exc:
                raise _StepError("expression", f"outputs of step {step.id!r}: {exc}") from None
        _check_storable(f"outputs of step {step.id!r}", outputs)
        return outputs


class _StepError(Exception):
    """A step's own logic failed (bad expression, bound exceeded): not retried."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind, self.message = kind, message


#: Largest outputs one step may produce, in bytes of JSON (Step Functions allows 256 KiB,
#: Temporal 2 MB): a checkpoint is written on every step, so large data should travel by
#: reference (a URL or an id) instead.
MAX_OUTPUT_BYTES = 2 * 1024 * 1024


def _check_storable(what: str, value: Any) -> None:
    """Fail the step (not the database write) when ``value`` cannot be checkpointed."""
    reason = unstorable_reason(value)
    if reason:
        raise _StepError("invalid_output", f"{what} cannot be stored: {reason}")
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_OUTPUT_BYTES:
        raise _StepError(
            "output_too_large",
            f"{what} are {size} bytes of JSON, more than the limit of {MAX_OUTPUT_BYTES} bytes; "
            "keep large data outside the run and pass a reference",
        )


def _retryable(error: Mapping[str, Any], policy: RetryPolicy) -> bool:
    """Whether ``error`` may be retried under ``policy`` (``retry_on``, ``non_retryable_status``)."""
    status = error.get("status")
    if isinstance(status, int) and status in policy.non_retryable_status:
        return False
    kind = error.get("kind")
    if kind == "http_status" and isinstance(status, int):
        if status == 429:
            return "http_429" in policy.retry_on
        if status >= 500:
            return "http_5xx" in policy.retry_on
        if 400 <= status < 500:
            return "http_4xx" in policy.retry_on
        return False
    return kind in policy.retry_on


def _describe(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{names.get(type(value), type(value).__name__)} {text}"
