"""The execution state machine."""

from __future__ import annotations

import pytest

from dsl.state import TERMINAL, ExecutionStatus, IllegalTransitionError, is_terminal, transition


def test_allowed_transitions() -> None:
    assert transition("queued", "running") is ExecutionStatus.RUNNING
    assert transition("queued", "cancelled") is ExecutionStatus.CANCELLED
    for end in ("completed", "failed", "cancelled"):
        assert transition("running", end).value == end


@pytest.mark.parametrize("terminal", sorted(s.value for s in TERMINAL))
def test_nothing_leaves_a_terminal_status(terminal: str) -> None:
    assert is_terminal(terminal)
    for target in ExecutionStatus:
        with pytest.raises(IllegalTransitionError):
            transition(terminal, target)


def test_unknown_status_and_skipping_running() -> None:
    with pytest.raises(ValueError):
        transition("running", "paused")
    with pytest.raises(IllegalTransitionError):
        transition("queued", "completed")
