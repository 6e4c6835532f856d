"""A run's step history: one entry per step attempt, built from its checkpoints.

The body of ``GET /v1/workflows/executions/{id}/steps`` and of
``WorkflowClient.steps(execution_id)``: both build it here, from the same rows, so a
script and the HTTP API see the same history.
"""

from __future__ import annotations

from typing import Any

from persistence.records import ExecutionRecord, StepCheckpoint

__all__ = ["step_history"]


def step_history(record: ExecutionRecord, checkpoints: list[StepCheckpoint]) -> dict[str, Any]:
    """``{execution_id, status, current_step, steps: [attempt...]}``; one entry per step attempt.

    Each attempt: ``step_key, step_id, step_type, attempt, status, started_at, ended_at,
    duration_ms, outputs, error, idempotency_key, node_id`` in checkpoint order (by end
    time); times are ISO 8601 UTC, ``duration_ms`` in ms; ``node_id`` is the Ray node a
    work step's attempt ran on, null for control steps.

    Args:
        record: the run (``Store.get_execution``).
        checkpoints: its checkpoints (``Store.load_checkpoints``).
    """
    attempts = []
    for cp in checkpoints:
        item = cp.to_dict()
        item.pop("execution_id", None)
        attempts.append(item)
    return {
        "execution_id": record.execution_id,
        "status": record.status,
        "current_step": record.current_step,
        "steps": attempts,
    }
