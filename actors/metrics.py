"""The engine's Prometheus metrics (FDD §10.1), recorded through :mod:`ray.util.metrics`.

Ray's metrics agent on each node serves what every worker process records on its
Prometheus endpoint (``ray.nodes()[i]["MetricsExportPort"]``), which is also what the Ray
dashboard charts read. The agent puts ``ray_`` before every name, and a counter is
exported with ``_total`` after its name; :attr:`MetricSpec.exported` gives the name a
query uses, and ``docs/operations.md`` lists them all with the alerts built on them.

=========================================  =========  ===============================  ==========================
metric (as exported)                       type       labels                           FDD §10.1
=========================================  =========  ===============================  ==========================
``ray_cortx_executions_started_total``     counter    ``workflow_pack_id``             execution count
``ray_cortx_executions_resumed_total``     counter    ``workflow_pack_id``             (recovery, not new runs)
``ray_cortx_executions_finished_total``    counter    ``workflow_pack_id``, ``status`` success/failure rate
``ray_cortx_execution_timeouts_total``     counter    ``workflow_pack_id``             execution time > timeout
``ray_cortx_execution_duration_seconds``   histogram  ``workflow_pack_id``, ``status`` average execution time
``ray_cortx_step_duration_seconds``        histogram  ``step_type``, ``status``        step execution time
``ray_cortx_step_retries_total``           counter    ``workflow_pack_id``,            (retries)
                                                      ``error_kind``
``ray_cortx_active_executions``            gauge      (none)                           active executions
``ray_cortx_overdue_executions``           gauge      (none)                           execution time > timeout
``ray_cortx_queue_depth``                  gauge      (none)                           queue depth
``ray_cortx_checkpoint_write_seconds``     histogram  ``operation``                    (state persistence, §9.1)
``ray_cortx_db_write_errors_total``        counter    ``operation``                    database connection issues
=========================================  =========  ===============================  ==========================

Labels are bounded: a pack id, a step type, a status, an error kind or a write operation;
never an execution id or a step key (one series per run would grow without end). Ray adds
its own labels (``WorkerId``, ``NodeAddress``, ``SessionName``, ...): a gauge is reported
per process, so queries ``sum`` the per-host gauges (active, overdue) and take the ``max``
of the queue depth, which every host reports for the whole deployment.

Every ``record``/``observe`` function does nothing when Ray is not initialised in the
process (the scheduler's unit tests run on plain asyncio), and never raises: a metric must
not fail a run. The Ray metric objects are made once per process, on first use. Ray is
imported only by then, so importing this module stays cheap and Ray-free.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

__all__ = [
    "ERROR_KINDS",
    "EXPORT_PREFIX",
    "METRICS",
    "REPORT_INTERVAL_S",
    "HostedRun",
    "MetricSpec",
    "count_overdue",
    "enabled",
    "execution_finished",
    "execution_started",
    "exported_series",
    "record_active",
    "record_db_write_error",
    "record_overdue",
    "record_queue_depth",
    "report_hosted",
    "report_hosted_forever",
    "step_finished",
    "step_retried",
    "timed_write",
]

log = logging.getLogger("cortx.metrics")

T = TypeVar("T")

#: What Ray's metrics agent puts before the name of every application metric.
EXPORT_PREFIX = "ray_"

#: Seconds between two reports of a host's gauges (active and overdue executions).
REPORT_INTERVAL_S = 5.0

#: Error kinds used as a label value as they are; any other kind is reported as ``other``,
#: so a new kind cannot grow the label set unnoticed.
ERROR_KINDS = frozenset({"http_status", "timeout", "connection", "invalid_request", "task_error"})

_SECONDS_RUN = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_SECONDS_STEP = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SECONDS_WRITE = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name as given to Ray, its kind, labels and (histograms) buckets.

    Attributes:
        name: the name given to :mod:`ray.util.metrics`, e.g. ``cortx_queue_depth``.
        kind: ``counter``, ``gauge`` or ``histogram``.
        description: the Prometheus ``HELP`` text; states the unit.
        labels: label (tag) keys; each has a bounded set of values.
        boundaries: histogram bucket upper bounds, in s; empty for the other kinds.
    """

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The name Ray's exporter gives it: ``ray_`` first, ``_total`` after a counter."""
        return EXPORT_PREFIX + self.name + ("_total" if self.kind == "counter" else "")

    @property
    def series(self) -> tuple[str, ...]:
        """Every series name a scrape shows: a histogram's ``_bucket``, ``_sum`` and ``_count``."""
        if self.kind == "histogram":
            return tuple(self.exported + suffix for suffix in ("_bucket", "_sum", "_count"))
        return (self.exported,)


EXECUTIONS_STARTED = MetricSpec(
    "cortx_executions_started", "counter", "Executions started for the first time.", ("workflow_pack_id",)
)
EXECUTIONS_RESUMED = MetricSpec(
    "cortx_executions_resumed",
    "counter",
    "Executions taken up again from their checkpoints by a new owner (a host restart, resume_unfinished).",
    ("workflow_pack_id",),
)
EXECUTIONS_FINISHED = MetricSpec(
    "cortx_executions_finished",
    "counter",
    "Executions that ended, by final status (completed, failed, cancelled).",
    ("workflow_pack_id", "status"),
)
EXECUTION_TIMEOUTS = MetricSpec(
    "cortx_execution_timeouts",
    "counter",
    "Executions failed because they ran past their timeout (options.timeout_seconds or WORKFLOW_TIMEOUT_SECONDS).",
    ("workflow_pack_id",),
)
EXECUTION_DURATION = MetricSpec(
    "cortx_execution_duration_seconds",
    "histogram",
    "Execution duration from first start to end, in seconds, by final status.",
    ("workflow_pack_id", "status"),
    _SECONDS_RUN,
)
STEP_DURATION = MetricSpec(
    "cortx_step_duration_seconds",
    "histogram",
    "Duration of one step attempt, in seconds, by step type and attempt status.",
    ("step_type", "status"),
    _SECONDS_STEP,
)
STEP_RETRIES = MetricSpec(
    "cortx_step_retries",
    "counter",
    "Step attempts that failed and will be tried again, by the failed attempt's error kind.",
    ("workflow_pack_id", "error_kind"),
)
ACTIVE_EXECUTIONS = MetricSpec(
    "cortx_active_executions", "gauge", "Executions hosted and running in this process now."
)
OVERDUE_EXECUTIONS = MetricSpec(
    "cortx_overdue_executions",
    "gauge",
    "Executions hosted in this process that are still running past their timeout (the engine should have ended them).",
)
QUEUE_DEPTH = MetricSpec(
    "cortx_queue_depth",
    "gauge",
    "Executions accepted and waiting for admission (status queued), deployment-wide; every host reports it (take the max).",
)
CHECKPOINT_WRITE = MetricSpec(
    "cortx_checkpoint_write_seconds",
    "histogram",
    "Latency of one successful write of a run's durable state, in seconds, by operation "
    "(checkpoint, current_step, finish).",
    ("operation",),
    _SECONDS_WRITE,
)
DB_WRITE_ERRORS = MetricSpec(
    "cortx_db_write_errors",
    "counter",
    "Writes of a run's durable state that failed with a lost or refused connection (each is retried).",
    ("operation",),
)

#: Every metric this module records, in the order of the table above.
METRICS: tuple[MetricSpec, ...] = (
    EXECUTIONS_STARTED,
    EXECUTIONS_RESUMED,
    EXECUTIONS_FINISHED,
    EXECUTION_TIMEOUTS,
    EXECUTION_DURATION,
    STEP_DURATION,
    STEP_RETRIES,
    ACTIVE_EXECUTIONS,
    OVERDUE_EXECUTIONS,
    QUEUE_DEPTH,
    CHECKPOINT_WRITE,
    DB_WRITE_ERRORS,
)


def exported_series() -> frozenset[str]:
    """Every series name Ray's exporter shows for :data:`METRICS` (what PromQL may refer to)."""
    return frozenset(name for spec in METRICS for name in spec.series)


# --- the Ray metric objects, one set per process ----------------------------------------------

_instruments: dict[str, Any] | None = None
_lock = threading.Lock()
_warned: set[str] = set()


def enabled() -> bool:
    """True when this process is connected to Ray, so records reach the exporter."""
    ray = sys.modules.get("ray")  # not imported: Ray cannot be initialised, nothing to do
    return ray is not None and bool(ray.is_initialized())


def _get() -> dict[str, Any] | None:
    global _instruments
    if not enabled():
        return None
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = _create()
    return _instruments


def _create() -> dict[str, Any]:
    from ray.util import metrics as ray_metrics

    made: dict[str, Any] = {}
    for spec in METRICS:
        try:
            if spec.kind == "counter":
                made[spec.name] = ray_metrics.Counter(spec.name, spec.description, spec.labels)
            elif spec.kind == "gauge":
                made[spec.name] = ray_metrics.Gauge(spec.name, spec.description, spec.labels)
            else:
                made[spec.name] = ray_metrics.Histogram(spec.name, spec.description, list(spec.boundaries), spec.labels)
        except Exception:  # noqa: BLE001 - a metric that cannot be made is left out, the run goes on
            log.warning("metric %s could not be created; it will not be reported", spec.name, exc_info=True)
    return made


def _record(spec: MetricSpec, value: float, tags: dict[str, str] | None = None) -> None:
    instruments = _get()
    if instruments is None:
        return
    metric = instruments.get(spec.name)
    if metric is None:
        return
    try:
        if spec.kind == "counter":
            if value > 0:
                metric.inc(value, tags=tags)
        elif spec.kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)
    except Exception:  # noqa: BLE001 - observing must never fail a run; say so once per metric
        if spec.name not in _warned:
            _warned.add(spec.name)
            log.warning("metric %s could not be recorded", spec.name, exc_info=True)


# --- what the engine records ------------------------------------------------------------------


def execution_started(workflow_pack_id: str, *, resumed: bool) -> None:
    """Count an execution taken up by its ExecutionActor (FDD §10.1 execution count).

    Args:
        workflow_pack_id: the run's pack id (a label).
        resumed: True when the run continues from checkpoints (counted apart, so a host
            restart does not count its runs twice).
    """
    _record(EXECUTIONS_RESUMED if resumed else EXECUTIONS_STARTED, 1, {"workflow_pack_id": workflow_pack_id})


def execution_finished(
    workflow_pack_id: str, status: str, duration_s: float | None, *, timed_out: bool = False
) -> None:
    """Count an ended execution and observe its duration (FDD §10.1 success/failure rate, time).

    Args:
        workflow_pack_id: the run's pack id.
        status: the final status (``completed``, ``failed``, ``cancelled``).
        duration_s: first start to end, in s; None when unknown (not observed).
        timed_out: the run failed because it passed its timeout (also counted apart).
    """
    tags = {"workflow_pack_id": workflow_pack_id, "status": status}
    _record(EXECUTIONS_FINISHED, 1, tags)
    if duration_s is not None:
        _record(EXECUTION_DURATION, max(duration_s, 0.0), tags)
    if timed_out:
        _record(EXECUTION_TIMEOUTS, 1, {"workflow_pack_id": workflow_pack_id})


def step_finished(step_type: str, status: str, duration_s: float) -> None:
    """Observe one step attempt's duration, in s, by step type and attempt status (FDD §10.1)."""
    _record(STEP_DURATION, max(duration_s, 0.0), {"step_type": step_type, "status": status})


def step_retried(workflow_pack_id: str, error_kind: str | None) -> None:
    """Count a failed attempt that will be retried; unknown error kinds are labelled ``other``."""
    kind = error_kind if error_kind in ERROR_KINDS else "other"
    _record(STEP_RETRIES, 1, {"workflow_pack_id": workflow_pack_id, "error_kind": kind})


def record_active(count: int) -> None:
    """Set the number of executions running in this process (FDD §10.1 active executions)."""
    _record(ACTIVE_EXECUTIONS, count)


def record_overdue(count: int) -> None:
    """Set the number of executions in this process still running past their timeout (FDD §10.2)."""
    _record(OVERDUE_EXECUTIONS, count)


def record_queue_depth(depth: int) -> None:
    """Set the number of executions waiting for admission (FDD §10.1 queue depth).

    The value is deployment-wide: each shared host's admission pass reads the number of
    ``queued`` runs from the database and reports it, so every host reports the same
    number and queries take the ``max`` over processes, not the sum.
    """
    _record(QUEUE_DEPTH, depth)


def record_db_write_error(operation: str) -> None:
    """Count a write of ``operation`` that failed with a lost connection (FDD §10.2)."""
    _record(DB_WRITE_ERRORS, 1, {"operation": operation})


async def timed_write(operation: str, action: Callable[[], Awaitable[T]]) -> T:
    """Await ``action()`` and, when it succeeds, observe its latency in s (FDD §9.1, §10.1).

    Args:
        operation: ``checkpoint``, ``current_step`` or ``finish`` (a label).
        action: the write.

    Returns:
        What ``action()`` returns; its errors propagate unobserved (the caller counts the
        connection errors it retries with :func:`record_db_write_error`).
    """
    started = time.perf_counter()
    result = await action()
    _record(CHECKPOINT_WRITE, time.perf_counter() - started, {"operation": operation})
    return result


# --- a host's gauges --------------------------------------------------------------------------


class HostedRun(Protocol):
    """What the host reporter reads of a run (an :class:`~actors.execution.ExecutionActor`)."""

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` by which the run should end, or None before it starts."""
        ...

    @property
    def final(self) -> dict[str, Any] | None:
        """The final record once the run ended, else None."""
        ...


def count_overdue(runs: Collection[HostedRun], now: float) -> int:
    """How many of ``runs`` have not ended although ``now`` (monotonic s) is past their deadline."""
    return sum(1 for run in runs if run.final is None and run.deadline is not None and now > run.deadline)


def report_hosted(runs: Collection[HostedRun], now: float | None = None) -> tuple[int, int]:
    """Set the active and overdue gauges from the runs a host holds now.

    Returns:
        ``(active, overdue)`` as reported.
    """
    overdue = count_overdue(runs, time.monotonic() if now is None else now)
    active = sum(1 for run in runs if run.final is None)
    record_active(active)
    record_overdue(overdue)
    return active, overdue


async def report_hosted_forever(
    runs: Callable[[], Collection[HostedRun]], interval_s: float = REPORT_INTERVAL_S
) -> None:
    """Call :func:`report_hosted` every ``interval_s`` s until cancelled (a host's background task)."""
    while True:
        try:
            report_hosted(runs())
        except Exception:  # noqa: BLE001 - a reporting bug must not end the loop silently for good
            log.warning("reporting the host's gauges failed", exc_info=True)
        await asyncio.sleep(interval_s)
