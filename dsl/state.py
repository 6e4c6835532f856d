"""The execution and step state machines: statuses, terminal sets, allowed transitions.

This is the only module that knows which status follows which (house style §12); it
imports neither Ray nor SQLAlchemy. ``queued`` is not in the FDD's list (§5.3): it is the
status of an execution accepted but not yet started (admission control, FDD §9.2).

Detail that is not a status (retrying, compensating, recovering) is kept elsewhere, in
events and step checkpoints, never as an execution status.
"""

from __future__ import annotations

from enum import Enum

from dsl.errors import WorkflowError

__all__ = [
    "ExecutionStatus",
    "IllegalTransitionError",
    "StepStatus",
    "TERMINAL",
    "is_terminal",
    "transition",
]


class ExecutionStatus(str, Enum):
    """Status of an execution (FDD §5.3, plus ``queued``)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(str, Enum):
    """Status of one step attempt in a checkpoint."""

    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TERMINAL: frozenset[ExecutionStatus] = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)

_ALLOWED: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.QUEUED: frozenset({ExecutionStatus.RUNNING, ExecutionStatus.CANCELLED}),
    ExecutionStatus.RUNNING: frozenset(
        {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.COMPLETED: frozenset(),
    ExecutionStatus.FAILED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset(),
}


class IllegalTransitionError(WorkflowError):
    """A status change the state machine does not allow.

    Args:
        current: the status now.
        target: the status asked for.
    """

    code = "illegal_transition"

    def __init__(self, current: str, target: str) -> None:
        super().__init__(current, target)
        self.current, self.target = current, target

    def message(self) -> str:
        return f"an execution cannot go from {self.current!r} to {self.target!r}"


def is_terminal(status: str | ExecutionStatus) -> bool:
    """True for ``completed``, ``failed`` and ``cancelled``."""
    return ExecutionStatus(status) in TERMINAL


def transition(current: str | ExecutionStatus, target: str | ExecutionStatus) -> ExecutionStatus:
    """Return ``target`` if the state machine allows ``current -> target``.

    Raises:
        IllegalTransitionError: the change is not allowed (e.g. out of a terminal status).
        ValueError: a status that does not exist.
    """
    now, then = ExecutionStatus(current), ExecutionStatus(target)
    if then not in _ALLOWED[now]:
        raise IllegalTransitionError(now.value, then.value)
    return then
