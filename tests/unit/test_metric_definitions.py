"""The metric definitions follow Prometheus' conventions and keep label sets bounded (FDD §10.1).

Recording without Ray does nothing and raises nothing (the scheduler's unit tests run on plain
asyncio). What Ray's exporter really emits is checked in ``tests/integration/test_metrics.py``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from actors import metrics

pytestmark = pytest.mark.timeout(30)


def test_names_follow_prometheus_conventions() -> None:
    for spec in metrics.METRICS:
        assert re.fullmatch(r"cortx_[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.exported.startswith("ray_cortx_")
        if spec.kind == "counter":
            # Ray's exporter appends ``_total``; a name that had it already would be doubled
            # by the OpenCensus exporter (RAY_enable_open_telemetry=0).
            assert not spec.name.endswith("_total") and spec.exported.endswith("_total"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and list(spec.boundaries) == sorted(set(spec.boundaries))
            assert spec.series == tuple(spec.exported + s for s in ("_bucket", "_sum", "_count"))
        else:
            assert not spec.boundaries
        assert spec.description.endswith(".") or spec.description.endswith(")"), spec.name
    assert len({spec.name for spec in metrics.METRICS}) == len(metrics.METRICS)


def test_labels_are_bounded() -> None:
    allowed = {"workflow_pack_id", "status", "step_type", "error_kind", "operation"}
    for spec in metrics.METRICS:
        assert set(spec.labels) <= allowed, spec.name  # never execution_id, step_key, step_id


_WITHOUT_RAY = """
import asyncio, sys
from actors import metrics
assert not metrics.enabled()
metrics.execution_started("pack", resumed=False)
metrics.execution_finished("pack", "failed", 1.5, timed_out=True)
metrics.step_finished("service_call", "completed", 0.02)
metrics.step_retried("pack", "http_status")
metrics.record_active(3)
metrics.record_overdue(1)
metrics.record_queue_depth(7)
metrics.record_db_write_error("checkpoint")
metrics.report_hosted([])

async def write():
    return "written"

assert asyncio.run(metrics.timed_write("checkpoint", write)) == "written"
print("ray imported:", "ray" in sys.modules)
"""


def test_recording_without_ray_does_nothing_and_does_not_import_it() -> None:
    # A fresh interpreter: in a whole-suite session this process may be connected to Ray.
    out = subprocess.run([sys.executable, "-c", _WITHOUT_RAY], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ray imported: False"


def test_timed_write_lets_the_write_error_through() -> None:
    async def fail() -> Any:
        raise ConnectionResetError("lost")

    with pytest.raises(ConnectionResetError):
        asyncio.run(metrics.timed_write("finish", fail))


@dataclass
class _Run:
    deadline: float | None
    final: dict[str, Any] | None = None


def test_overdue_counts_unfinished_runs_past_their_deadline() -> None:
    runs = [
        _Run(deadline=100.0),  # overdue
        _Run(deadline=100.0, final={"status": "failed"}),  # ended: not overdue
        _Run(deadline=200.0),  # within its timeout
        _Run(deadline=None),  # not started yet
    ]
    assert metrics.count_overdue(runs, now=150.0) == 1
    assert metrics.count_overdue(runs, now=250.0) == 2
    assert metrics.report_hosted(runs, now=150.0) == (3, 1)


def test_host_reporter_reports_until_cancelled() -> None:
    seen: list[int] = []

    def runs() -> list[_Run]:
        seen.append(1)
        return [_Run(deadline=None)]

    async def main() -> None:
        task = asyncio.create_task(metrics.report_hosted_forever(runs, interval_s=0.01))
        deadline = asyncio.get_running_loop().time() + 5
        while len(seen) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(seen) >= 3
