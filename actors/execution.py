"""The ExecutionActor: the single owner of one run's state, hosted in an ExecutionHost.

One ExecutionActor exists per run while it runs. It claims the run in the database (which
bumps the run's ``owner_epoch``, the fencing token every later write is checked against),
loads the pack snapshot and any checkpoints, drives a :class:`~actors.scheduler.Scheduler`,
and writes the final record. It is the :class:`~actors.scheduler.Journal` of its scheduler:
each step attempt's checkpoint is written in one transaction with the run's progress
(``current_step``, ``completed_steps``), and the run's events are kept for live watchers.

A database that cannot be reached is waited for: a checkpoint write is retried with
backoff until it succeeds, so a run pauses rather than fails (the write is first-write-wins,
so a retry after an ambiguous commit does not write twice). A :class:`~dsl.errors.FencedError`
means another owner took the run over; this one stops without writing anything more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from actors import metrics
from actors.egress import EgressPolicy
from actors.logs import execution_id_var
from actors.outbox_events import compensation_targets, ended_events, retrying_events, started_events
from actors.secrets import masked_strings, redact
from actors.registry import ServiceRegistry
from actors.scheduler import RunOutcome, Scheduler, StepRunner
from actors.settings import Settings
from dsl.errors import FencedError, WorkflowError
from dsl.models import Step, WorkflowPack
from dsl.secrets import secret_input_names, with_secret_inputs
from dsl.state import ExecutionStatus, is_terminal
from persistence.records import ExecutionRecord, StepCheckpoint
from persistence.store import Store, is_transient_error

__all__ = ["ExecutionActor", "MAX_EVENTS_KEPT", "NOT_PERSISTED", "status_record"]

log = logging.getLogger("cortx.execution")

#: Events kept in memory per run for live watchers (the database keeps the checkpoints).
MAX_EVENTS_KEPT = 10_000

#: A step attempt's start (``current_step`` and its ``step.started`` outbox event) is written
#: this many s after the attempt starts, if it is still running then; an attempt that ends
#: sooner has its start written in its checkpoint's transaction instead: one transaction
#: per step attempt rather than two. The start is progress information, not a checkpoint: a
#: step in flight at a crash runs again either way (``docs/semantics.md``).
START_WRITE_DELAY_S = 0.05


class _PendingStart:
    """The start of one step attempt, not yet written (see :data:`START_WRITE_DELAY_S`)."""

    __slots__ = ("error", "events", "task", "writing")

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.task: asyncio.Task[None] | None = None
        self.writing = False  # the delay passed: the write is in flight or done
        self.error: BaseException | None = None


#: What a record says when STATE_PERSISTENCE_ENABLED=false (FDD §6): what the run gives up.
NOT_PERSISTED = (
    "STATE_PERSISTENCE_ENABLED=false: this run is kept in memory only; a crash of its host loses it, "
    "and it cannot be resumed or read from another process"
)


def status_record(record: ExecutionRecord, settings: Settings) -> dict[str, Any]:
    """The FDD §3.2 status record; when persistence is off it says so in ``persistence``."""
    status = record.to_status_dict()
    if not settings.state_persistence_enabled or settings.store_url.startswith("memory://"):
        status["persistence"] = NOT_PERSISTED
    return status


class ExecutionActor:
    """Owns one run: claims it, runs its scheduler, records checkpoints, ends it.

    Args:
        execution_id: the run (its row must exist in ``store``).
        store: the database.
        registry: service registry for ``service_call`` steps.
        settings: engine settings (``MAX_PARALLEL_STEPS`` and friends).
        runner: does step work (Ray tasks in a host).
    """

    def __init__(
        self,
        execution_id: str,
        *,
        store: Store,
        registry: ServiceRegistry,
        settings: Settings,
        runner: StepRunner,
    ) -> None:
        self.execution_id = execution_id
        self._store = store
        self._registry = registry
        self._settings = settings
        self._runner = runner
        self._epoch = 0
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._scheduling = False  # the scheduler has started (a cancel may interrupt it)
        self._events: list[dict[str, Any]] = []
        self._seq = 0
        self._changed = asyncio.Condition()
        self._started_keys: set[str] = set()
        self._finished_keys: set[str] = set()
        self.final: dict[str, Any] | None = None
        self._secret_inputs: dict[str, Any] = {}
        self._has_secret_inputs = True  # until the claimed record's pack says otherwise
        self._masked: list[str] = []  # strings masked as *** in everything this actor records
        #: ``time.monotonic()`` by which the run should end (its timeout); None before it starts.
        self.deadline: float | None = None
        self._pack_id = ""
        self._compensations: dict[str, str | None] = {}  # compensation step id -> the step it undoes
        self._pending_starts: dict[str, _PendingStart] = {}  # step key -> its start, not yet written

    # --- life -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Run to the end; return the final status record (FDD §3.2 shape).

        Raises:
            asyncio.CancelledError: the host is shutting down (the run stays resumable).
        """
        self._task = asyncio.current_task()
        execution_id_var.set(self.execution_id)  # every log line of this run carries its id
        record = await self._with_db_retry(lambda: self._store.claim_execution(self.execution_id))
        pack = WorkflowPack.model_validate(record.pack_document)
        # Only a pack that declares `secret: true` inputs has rows in the secret store
        # (actors.host.store_submission); the others skip its read and delete.
        self._has_secret_inputs = bool(secret_input_names(pack.input_schema()))
        if record.status == ExecutionStatus.QUEUED.value:
            # Not admitted yet (FDD §9.2): the admission pass starts it when a slot frees.
            self._append("execution.queued")
            return status_record(record, self._settings)
        if is_terminal(record.status):
            # Ended, but its secret inputs may have outlived it (a crash right after the end).
            await self._delete_secret_inputs()
            self._append("execution.already_finished", status=record.status)
            self.final = status_record(record, self._settings)
            await self._notify()
            return self.final
        self._epoch = record.owner_epoch
        checkpoints = await self._with_db_retry(lambda: self._store.load_checkpoints(self.execution_id))
        # Secret inputs come from the secret store, not the record (which holds "***").
        if self._has_secret_inputs:
            self._secret_inputs = await self._with_db_retry(lambda: self._store.load_secret_inputs(self.execution_id))
        self._masked = masked_strings(self._secret_inputs.values())
        await self._emit("execution.started" if not checkpoints else "execution.resumed", checkpoints=len(checkpoints))
        self._pack_id = record.workflow_pack_id
        metrics.execution_started(record.workflow_pack_id, resumed=bool(checkpoints))
        self._compensations = compensation_targets(pack)
        if self._cancel_requested:
            # Cancelled while it was being claimed: nothing ran; end it without scheduling.
            return await self._finish(self._cancelled_outcome(record))
        self._scheduling = True  # from here a cancel interrupts the scheduler (see cancel)
        try:
            scheduler = self._scheduler(record, checkpoints)
            self.deadline = time.monotonic() + self._timeout_s(record)
            outcome = await scheduler.run()
        except asyncio.CancelledError:
            if not self._cancel_requested:
                raise
            outcome = self._cancelled_outcome(record)
        except FencedError:
            log.warning("execution %s: another owner took over; stopping", self.execution_id)
            raise
        finally:
            # From here on a cancel must not interrupt: a second cancel request used to
            # cancel the task again in the middle of _finish, which left the run `running`
            # with nobody hosting it.
            self._scheduling = False
        return await self._finish(outcome)

    def _cancelled_outcome(self, record: ExecutionRecord) -> RunOutcome:
        never_ran = self._never_ran(WorkflowPack.model_validate(record.pack_document))
        return RunOutcome(
            ExecutionStatus.CANCELLED,
            error="cancelled by request",
            error_detail={"kind": "cancelled", "never_ran": never_ran},
        )

    def cancel(self) -> bool:
        """Ask the run to stop: nothing new starts and in-flight step tasks are cancelled.

        Before the scheduler starts (the run is still being claimed and loaded) the request
        is only noted: interrupting the claim would leave the run ``running`` with no owner;
        :meth:`run` ends it ``cancelled`` as soon as the claim is done. Once the scheduler
        has stopped, :meth:`run` is ending the run and is never interrupted.

        While the scheduler runs, every request interrupts it again, not only the first:
        an interruption that some await swallowed (Python 3.11's ``asyncio.wait_for`` drops
        one that lands as its call completes) must not leave the run uncancellable.

        Returns:
            False when the run had already ended.
        """
        if self.final is not None or self._task is None or self._task.done():
            return False
        self._cancel_requested = True
        if self._scheduling:
            self._task.cancel()
        return True

    def _timeout_s(self, record: ExecutionRecord) -> float:
        return float((record.options or {}).get("timeout_seconds") or self._settings.workflow_timeout_seconds)

    def _scheduler(self, record: ExecutionRecord, checkpoints: list[StepCheckpoint]) -> Scheduler:
        options = record.options or {}
        return Scheduler(
            WorkflowPack.model_validate(record.pack_document),
            execution_id=self.execution_id,
            inputs=with_secret_inputs(record.inputs, self._secret_inputs),
            runner=self._runner,
            journal=self,
            registry=self._registry,
            max_parallel_steps=self._settings.max_parallel_steps,
            default_retry_count=self._settings.default_retry_count,
            timeout_seconds=self._timeout_s(record),
            max_retries=options.get("max_retries"),
            max_loop_iterations=self._settings.max_loop_iterations,
            checkpoints=checkpoints,
            egress_policy=EgressPolicy.from_settings(self._settings),
            # Not record.context: replay rebuilds the context step by step, so a resumed run
            # sees at each point the context the first incarnation saw there.
            context=None,
        )

    async def _finish(self, outcome: RunOutcome) -> dict[str, Any]:
        await self._drop_pending_starts()
        if self._masked:
            outcome = RunOutcome(
                outcome.status,
                outputs=redact(outcome.outputs, self._masked),
                error=redact(outcome.error, self._masked),
                error_detail=redact(outcome.error_detail, self._masked),
            )
        record = await self._with_db_retry(
            lambda: self._store.finish_execution(
                self.execution_id,
                owner_epoch=self._epoch,
                status=outcome.status.value,
                outputs=outcome.outputs,
                error=outcome.error,
                error_detail=outcome.error_detail,
            ),
            operation="finish",
        )
        detail = outcome.error_detail or {}
        timed_out = detail.get("kind") == "timeout" and not detail.get("step")
        duration_ms = record.duration_ms
        metrics.execution_finished(
            record.workflow_pack_id, record.status, None if duration_ms is None else duration_ms / 1000, timed_out=timed_out
        )
        # The run is over: its secret inputs are not needed again (docs/security.md).
        await self._delete_secret_inputs()
        # The last event goes in before ``final`` is set, so a watcher that sees the run
        # done has also seen its last event.
        self._append(f"execution.{record.status}", error=outcome.error)
        self.final = status_record(record, self._settings)
        await self._notify()
        return self.final

    async def _delete_secret_inputs(self) -> None:
        if self._has_secret_inputs:
            await self._with_db_retry(lambda: self._store.delete_secret_inputs(self.execution_id))

    def _never_ran(self, pack: WorkflowPack) -> list[str]:
        from dsl.models import iter_steps

        return [s.id for _, s, _ in iter_steps(pack.steps) if s.id not in self._started_ids()]

    def _started_ids(self) -> set[str]:
        return {key.rsplit("/", 1)[-1] for key in self._started_keys}

    # --- Journal --------------------------------------------------------------------------

    async def step_started(self, step_key: str, step: Step, attempt: int) -> None:
        """Record that a step attempt starts: ``current_step`` and an event.

        The database write waits :data:`START_WRITE_DELAY_S`: an attempt that ends sooner
        has it folded into its checkpoint's transaction (:meth:`step_ended`).
        """
        self._started_keys.add(step_key)
        pending = _PendingStart(started_events(step_key, step.type, attempt, self._masked))
        previous = self._pending_starts.pop(step_key, None)
        if previous is not None:  # an attempt that never recorded its end (cancelled)
            await self._settle_start(previous, fold=False)
        self._pending_starts[step_key] = pending
        pending.task = asyncio.get_running_loop().create_task(self._write_start_later(step_key, pending))
        await self._emit("step.started", step_key=step_key, step_type=step.type, attempt=attempt)

    async def _write_start_later(self, step_key: str, pending: _PendingStart) -> None:
        await asyncio.sleep(START_WRITE_DELAY_S)
        pending.writing = True
        try:
            await self._with_db_retry(
                lambda: self._store.set_current_step(
                    self.execution_id, owner_epoch=self._epoch, step_key=step_key,
                    events=pending.events,  # the outbox, same transaction
                ),
                operation="current_step",
            )
        except Exception as exc:  # noqa: BLE001 - raised again by whoever settles this start
            pending.error = exc

    async def _settle_start(self, pending: _PendingStart, *, fold: bool) -> list[Any]:
        """Stop or finish the start's own write; return its events if they must go in the caller's transaction.

        Raises:
            Exception: what the start's own write raised (FencedError: another owner).
        """
        assert pending.task is not None
        if not pending.writing:
            pending.task.cancel()  # still waiting: it never touches the database now
            return pending.events if fold else []
        await asyncio.shield(pending.task)  # in flight: let it commit first (outbox order)
        if pending.error is not None:
            raise pending.error
        return []

    async def _drop_pending_starts(self) -> None:
        """Before the final write: no start of this run may be written after it."""
        pending, self._pending_starts = list(self._pending_starts.values()), {}
        for start in pending:
            try:
                await self._settle_start(start, fold=False)
            except Exception:  # noqa: BLE001 - the final write reports fencing itself
                pass

    async def step_ended(
        self,
        checkpoint: StepCheckpoint,
        *,
        completed_step: str | None,
        context: dict[str, Any] | None = None,
        emitted: list[dict[str, Any]] | None = None,
    ) -> None:
        """Write the attempt's checkpoint, the run's progress (and context) and its outbox events in one transaction."""
        if self._masked:
            # Defence in depth: the step task masks what it returns; this also covers values
            # an upstream sent back that the attempt itself did not use.
            checkpoint = replace(
                checkpoint, outputs=redact(checkpoint.outputs, self._masked), error=redact(checkpoint.error, self._masked)
            )
            context = redact(context, self._masked)
        pending = self._pending_starts.pop(checkpoint.step_key, None)
        # The start, when not written yet, goes first in this transaction's outbox events.
        folded = await self._settle_start(pending, fold=True) if pending is not None else []
        events = folded + ended_events(
            checkpoint, compensations=self._compensations, emitted=emitted, masked=self._masked
        )
        await self._with_db_retry(
            lambda: self._store.write_checkpoint(
                checkpoint,
                owner_epoch=self._epoch,
                current_step=checkpoint.step_key,
                completed_step=completed_step,
                context=context,
                events=events,
            )
        )
        metrics.step_finished(checkpoint.step_type, checkpoint.status, checkpoint.duration_ms / 1000)
        await self._emit(
            f"step.{checkpoint.status}",
            step_key=checkpoint.step_key,
            step_type=checkpoint.step_type,
            attempt=checkpoint.attempt,
            duration_ms=checkpoint.duration_ms,
            error=(checkpoint.error or {}).get("message"),
        )

    async def step_retrying(self, step_key: str, attempt: int, delay_ms: int, error: Mapping[str, Any]) -> None:
        """Emit a ``step.retrying`` event (the failed attempt is already checkpointed)."""
        metrics.step_retried(self._pack_id, error.get("kind"))
        await self._with_db_retry(
            lambda: self._store.append_events(
                self.execution_id, owner_epoch=self._epoch,
                events=retrying_events(step_key, attempt, delay_ms, error, self._masked),
            ),
            operation="event",
        )
        await self._emit("step.retrying", step_key=step_key, attempt=attempt, delay_ms=delay_ms, error=error.get("message"))

    async def _with_db_retry(self, action: Any, operation: str = "checkpoint") -> Any:
        """Run a database write; on a lost connection wait and try again (runs wait, not fail).

        Any other error (a value the database refuses) is raised: trying again would fail the
        same way forever. ``operation`` names the write in the metrics (FDD §10.1, §10.2).
        """
        delay = 0.1
        while True:
            try:
                return await metrics.timed_write(operation, action)
            except (WorkflowError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below
                if not is_transient_error(exc):
                    raise
                metrics.record_db_write_error(operation)
                log.warning("database write failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def fail_after_crash(self, exc: BaseException) -> None:
        """End the run ``failed`` after the engine itself broke (a bug), so no one waits forever."""
        outcome = RunOutcome(
            ExecutionStatus.FAILED,
            error=f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            error_detail={"kind": "internal", "message": f"{type(exc).__name__}: {str(exc)[:1000]}"},
        )
        try:
            await self._finish(outcome)
        except Exception:  # noqa: BLE001 - the database refuses too: leave it to recovery
            log.exception("could not record the failure")

    # --- events ---------------------------------------------------------------------------

    async def _emit(self, kind: str, **fields: Any) -> None:
        self._append(kind, **fields)
        await self._notify()

    def _append(self, kind: str, **fields: Any) -> None:
        self._seq += 1
        fields = redact(fields, self._masked)  # events and log lines never carry a secret input
        event = {"seq": self._seq, "type": kind, "at": time.time(), **{k: v for k, v in fields.items() if v is not None}}
        log.info(kind, extra={k: v for k, v in event.items() if k not in {"type", "at"}})
        self._events.append(event)
        if len(self._events) > MAX_EVENTS_KEPT:
            del self._events[: len(self._events) - MAX_EVENTS_KEPT]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def events_after(self, seq: int, timeout_s: float) -> dict[str, Any]:
        """Events with ``seq`` above ``seq``, waiting up to ``timeout_s`` s for one.

        Returns:
            ``{"events": [...], "done": bool}``; ``done`` once the run has ended.
        """
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while not [e for e in self._events[-1:] if e["seq"] > seq] and self.final is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
                except TimeoutError:
                    break
        return {"events": [e for e in self._events if e["seq"] > seq], "done": self.final is not None}
