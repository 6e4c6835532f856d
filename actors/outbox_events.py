"""The outbox events an ExecutionActor writes with each step's state change (``docs/events.md``).

Pure functions, no Ray and no database: the ExecutionActor passes their results to
``Store.set_current_step`` / ``write_checkpoint`` / ``append_events``, which write them in
the transaction of the change (:mod:`persistence.outbox`). The claim and the final write
make their own ``execution.*`` events in the store.

Payloads carry identifiers, timings and one-line error messages, never step outputs,
inputs or headers; every string is passed through :func:`actors.secrets.redact` with the
run's secret values, so an event never carries a secret (``docs/security.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.secrets import redact
from dsl.models import WorkflowPack, all_steps
from persistence.outbox import NewEvent
from persistence.records import StepCheckpoint

__all__ = ["compensation_targets", "retrying_events", "started_events", "ended_events"]


def compensation_targets(pack: WorkflowPack) -> dict[str, str | None]:
    """``{step id: the id it compensates, or None}`` for every step of a ``compensate`` list (FDD §8.3)."""
    return {
        step.id: step.compensates for pointer, step, _ in all_steps(pack) if "/compensate/" in pointer
    }


def _clean(payload: Mapping[str, Any], masked: list[str]) -> dict[str, Any]:
    return {k: v for k, v in redact(dict(payload), masked).items() if v is not None}


def started_events(step_key: str, step_type: str, attempt: int, masked: list[str]) -> list[NewEvent]:
    """``step.started`` of one attempt: ``{"step_type"}``."""
    return [NewEvent("step.started", step_key, attempt, _clean({"step_type": step_type}, masked))]


def ended_events(
    checkpoint: StepCheckpoint,
    *,
    compensations: Mapping[str, str | None],
    emitted: list[dict[str, Any]] | None,
    masked: list[str],
) -> list[NewEvent]:
    """The events of one ended attempt, in order.

    * ``step.fallback`` first when a fallback recovered the step (its ``cause`` message);
    * ``step.<status>`` (``completed``/``failed``/``skipped``/``cancelled``) with
      ``step_type``, ``duration_ms`` and ``error`` (the message);
    * ``step.compensated`` when a compensation step completed (``compensates``: the step
      it undid, if it names one);
    * the custom events of an ``emit`` step (``{"data": ...}``).
    """
    error = checkpoint.error if isinstance(checkpoint.error, dict) else {}
    key, attempt = checkpoint.step_key, checkpoint.attempt
    events: list[NewEvent] = []
    if error.get("kind") == "recovered_by_fallback":
        cause = error.get("cause") if isinstance(error.get("cause"), dict) else {}
        events.append(NewEvent("step.fallback", key, attempt, _clean(
            {"step_type": checkpoint.step_type, "error": cause.get("message"), "kind": cause.get("kind")}, masked)))
        message = None
    else:
        message = error.get("message")
    events.append(NewEvent(f"step.{checkpoint.status}", key, attempt, _clean({
        "step_type": checkpoint.step_type,
        "duration_ms": checkpoint.duration_ms,
        "error": message if isinstance(message, str) else None,
    }, masked)))
    if checkpoint.status == "completed" and checkpoint.step_id in compensations:
        events.append(NewEvent("step.compensated", key, attempt, _clean(
            {"step_type": checkpoint.step_type, "compensates": compensations[checkpoint.step_id]}, masked)))
    if checkpoint.status == "completed":
        for custom in emitted or ():
            events.append(NewEvent(str(custom["event_type"]), key, attempt, {"data": redact(custom.get("data"), masked)}))
    return events


def retrying_events(step_key: str, attempt: int, delay_ms: int, error: Mapping[str, Any], masked: list[str]) -> list[NewEvent]:
    """``step.retrying`` after failed attempt ``attempt``: ``{"delay_ms", "error", "kind"}``."""
    return [NewEvent("step.retrying", step_key, attempt, _clean(
        {"delay_ms": delay_ms, "error": error.get("message"), "kind": error.get("kind")}, masked))]
