"""Immutable records the store returns, the status vocabulary, and time helpers.

Everything here is plain Python (no SQLAlchemy): the records are what the rest of the
service sees of the database, whichever backend (:class:`persistence.store.SqlStore` or
:class:`persistence.store.MemoryStore`) produced them.

Statuses are defined once, here; compare against these constants, never against
string literals scattered through the code::

    execution: queued -> running -> completed | failed | cancelled
    step checkpoint: completed | failed | skipped | cancelled

The values are those of ``dsl.state.ExecutionStatus`` / ``StepStatus`` (str enums, which
own the transition rules); the stores accept either form and always return plain strings.

Datetimes are always timezone-aware UTC. SQLite stores them without an offset, so the
store normalises every value it reads with :func:`as_utc`; JSON-ready forms use
:func:`isoformat_z` (``2024-05-01T12:00:00.123Z``, millisecond precision).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from dsl.state import TERMINAL, ExecutionStatus, StepStatus

__all__ = [
    "ACTIVE_STATUSES",
    "EXECUTION_STATUSES",
    "FINISH_STATUSES",
    "ISOLATION_MODES",
    "STATUS_CANCELLED",
    "STATUS_COMPLETED",
    "STATUS_FAILED",
    "STATUS_QUEUED",
    "STATUS_RUNNING",
    "STEP_STATUSES",
    "STEP_STATUS_SKIPPED",
    "TERMINAL_STATUSES",
    "ExecutionRecord",
    "PackRecord",
    "StepCheckpoint",
    "as_utc",
    "content_hash",
    "isoformat_z",
    "utc_now",
]

# The statuses are defined once, in dsl.state (house style §12); these are their string values
# as stored in the database.
STATUS_QUEUED: Final = ExecutionStatus.QUEUED.value
STATUS_RUNNING: Final = ExecutionStatus.RUNNING.value
STATUS_COMPLETED: Final = ExecutionStatus.COMPLETED.value
STATUS_FAILED: Final = ExecutionStatus.FAILED.value
STATUS_CANCELLED: Final = ExecutionStatus.CANCELLED.value
STEP_STATUS_SKIPPED: Final = StepStatus.SKIPPED.value

#: Statuses an execution never leaves; writes against them are refused.
TERMINAL_STATUSES: Final = frozenset(status.value for status in TERMINAL)
#: Every execution status.
EXECUTION_STATUSES: Final = frozenset(status.value for status in ExecutionStatus)
#: Statuses of an execution that still has an owner doing (or about to do) work.
ACTIVE_STATUSES: Final = EXECUTION_STATUSES - TERMINAL_STATUSES
#: Statuses ``finish_execution`` accepts (the terminal ones).
FINISH_STATUSES: Final = TERMINAL_STATUSES
#: Statuses of one step attempt's checkpoint.
STEP_STATUSES: Final = frozenset(status.value for status in StepStatus)
#: ``shared`` runs on the shared step pool; ``dedicated`` gets its own actors.
ISOLATION_MODES: Final = frozenset({"shared", "dedicated"})

#: Column widths, in characters; the schema in ``persistence.models`` uses these.
MAX_PACK_ID: Final = 200
MAX_VERSION: Final = 64
MAX_STEP_KEY: Final = 512
MAX_STEP_ID: Final = 200
MAX_STEP_TYPE: Final = 32
MAX_IDEMPOTENCY_KEY: Final = 300
MAX_NODE_ID: Final = 64

_MS = timedelta(milliseconds=1)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (microsecond resolution)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime.

    Args:
        value: a datetime; a naive one is taken to already be UTC (that is how the
            store writes them and how SQLite hands them back).

    Returns:
        The same instant with ``tzinfo=UTC``.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def isoformat_z(value: datetime | None) -> str | None:
    """ISO 8601 UTC text with millisecond precision and a ``Z`` suffix.

    Args:
        value: an aware (or naive-UTC) datetime, or ``None``.

    Returns:
        e.g. ``"2024-05-01T12:00:00.123Z"``; ``None`` for ``None``.
    """
    if value is None:
        return None
    return as_utc(value).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def content_hash(document: Any) -> str:
    """SHA-256 (64 hex characters) of the canonical JSON of ``document``.

    Canonical JSON: keys sorted, no insignificant whitespace, UTF-8, non-ASCII kept.
    Two documents that differ only in key order hash the same.

    Raises:
        TypeError: ``document`` holds a value JSON cannot represent.
    """
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _millis(start: datetime, end: datetime) -> int:
    return max(0, (as_utc(end) - as_utc(start)) // _MS)


@dataclass(frozen=True)
class PackRecord:
    """One stored WorkflowPack version. Versions are immutable once saved.

    Attributes:
        pack_id: the pack's id (at most 200 characters).
        version: the pack's version string (at most 64 characters).
        document: the validated pack as a JSON object.
        source_text: the YAML/JSON text it was loaded from, when known.
        deprecated: whether new runs of this version are discouraged.
        created_at: when this version was first saved (aware UTC).
    """

    pack_id: str
    version: str
    document: dict
    source_text: str | None
    deprecated: bool
    created_at: datetime

    @property
    def content_hash(self) -> str:
        """SHA-256 hex digest of the canonical JSON of ``document`` (see :func:`content_hash`)."""
        return content_hash(self.document)


@dataclass(frozen=True)
class ExecutionRecord:
    """One workflow execution as stored.

    Attributes:
        execution_id: canonical lowercase uuid string (36 characters).
        workflow_pack_id: id of the pack being run.
        version: version of that pack.
        status: one of :data:`EXECUTION_STATUSES`.
        inputs: run inputs (JSON object).
        options: run options (JSON object), e.g. timeouts and parallelism.
        context: the engine's saved evaluation context (JSON object), for resuming.
        isolation: one of :data:`ISOLATION_MODES`.
        current_step: step key being worked on, e.g. ``"process-items[3]/validate-item"``.
        completed_steps: keys of the completed steps outside loop bodies, in completion order,
            each at most once (loop iterations are in the checkpoints only; docs/api.md).
        outputs: the workflow's outputs once completed.
        error: one-line failure message.
        error_detail: structured failure, e.g. ``{"step", "kind", "message", "attempts"}``.
        owner_epoch: fencing token; bumped by every claim.
        created_at: when the execution was created (aware UTC).
        started_at: when it first started running, or ``None`` while queued.
        completed_at: when it reached a terminal status, else ``None``.
        updated_at: last write to the row.
        pack_document: the exact pack snapshot this run uses.
    """

    execution_id: str
    workflow_pack_id: str
    version: str
    status: str
    inputs: dict
    options: dict
    context: dict
    isolation: str
    current_step: str | None
    completed_steps: list[str]
    outputs: dict | None
    error: str | None
    error_detail: dict | None
    owner_epoch: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    pack_document: dict

    @property
    def is_terminal(self) -> bool:
        """True when ``status`` is one of :data:`TERMINAL_STATUSES`."""
        return self.status in TERMINAL_STATUSES

    @property
    def duration_ms(self) -> int | None:
        """Milliseconds from ``started_at`` to ``completed_at`` (or to now while not finished).

        ``None`` when the execution never started.
        """
        if self.started_at is None:
            return None
        end = self.completed_at if self.completed_at is not None else utc_now()
        return _millis(self.started_at, end)

    def to_status_dict(self) -> dict[str, Any]:
        """The JSON-ready status record (FDD §3.2), keys in this order.

        ``execution_id, workflow_pack_id, version, status, started_at, completed_at,
        current_step, completed_steps, outputs, duration_ms, error, error_detail``;
        datetimes are ISO 8601 UTC strings ending in ``Z`` (millisecond precision).
        """
        return {
            "execution_id": self.execution_id,
            "workflow_pack_id": self.workflow_pack_id,
            "version": self.version,
            "status": self.status,
            "started_at": isoformat_z(self.started_at),
            "completed_at": isoformat_z(self.completed_at),
            "current_step": self.current_step,
            "completed_steps": list(self.completed_steps),
            "outputs": self.outputs,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "error_detail": self.error_detail,
        }


@dataclass(frozen=True)
class StepCheckpoint:
    """The durable result of one attempt of one step.

    Attributes:
        execution_id: the execution the step belongs to.
        step_key: the step's path within the run, e.g. ``"process-items[3]/validate-item"``
            (at most 512 characters).
        attempt: 1-based attempt number.
        step_id: the step's id in the pack (at most 200 characters).
        step_type: the step's type, e.g. ``task`` (at most 32 characters).
        status: one of :data:`STEP_STATUSES`.
        outputs: the step's outputs (any JSON value), or ``None``.
        error: structured failure (``kind``, ``message``, ``retryable``, ...), or ``None``.
        idempotency_key: key handed to side-effecting steps, at most 300 characters.
        started_at: when the attempt started (aware).
        ended_at: when it ended (aware).
        node_id: the Ray node (hex id, at most 64 characters) the attempt ran on, or
            ``None`` for steps evaluated in the ExecutionActor itself.
    """

    execution_id: str
    step_key: str
    attempt: int
    step_id: str
    step_type: str
    status: str
    outputs: Any | None
    error: dict | None
    idempotency_key: str | None
    started_at: datetime
    ended_at: datetime
    node_id: str | None = None

    @property
    def duration_ms(self) -> int:
        """Milliseconds from ``started_at`` to ``ended_at`` (never negative)."""
        return _millis(self.started_at, self.ended_at)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of the fields plus ``duration_ms``; datetimes as ``...Z`` strings."""
        return {
            "execution_id": self.execution_id,
            "step_key": self.step_key,
            "attempt": self.attempt,
            "step_id": self.step_id,
            "step_type": self.step_type,
            "status": self.status,
            "outputs": self.outputs,
            "error": self.error,
            "idempotency_key": self.idempotency_key,
            "started_at": isoformat_z(self.started_at),
            "ended_at": isoformat_z(self.ended_at),
            "duration_ms": self.duration_ms,
            "node_id": self.node_id,
        }

