"""The engine's FDD §10.1 metrics reach Ray's Prometheus endpoint, with their labels and values.

Runs of a pack with a fresh id go through the real engine (ExecutionHost, ExecutionActor,
step tasks, the demo services, a SQLite store): one completes after a retried 503, one
fails for good, one passes its timeout, and one of another pack stays in flight (for the
active-executions gauge) until it is cancelled. The node's metrics endpoint (the port Ray
reports as ``MetricsExportPort``) is scraped over HTTP until the series of that pack show
the expected counts; Ray's agent exports on an interval of a few seconds, so the scrape is
polled with a deadline.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import demo_registry

pytestmark = [pytest.mark.timeout(240), pytest.mark.ray]

Samples = list[tuple[str, dict[str, str], float]]


def _pack(pack_id: str, endpoint: str = "/v1/probe", max_attempts: int = 2) -> dict[str, Any]:
    return {
        "id": pack_id,
        "name": "Metrics probe",
        "version": "1.0.0",
        "outputs": {"echoed": "${ steps.call.outputs.path }"},
        "steps": [
            {
                "id": "call",
                "type": "service_call",
                "service": "echo",
                "endpoint": endpoint,
                "inputs": {"n": 1},
                "on_error": {"retry": {"max_attempts": max_attempts, "backoff": "fixed", "initial_delay_ms": 50}},
            },
            {
                "id": "done",
                "type": "condition",
                "dependencies": ["call"],
                "condition": "steps.call.outputs.path != ''",
                "then": [],
            },
        ],
    }


def _metrics_url() -> str:
    import ray

    ports = [node["MetricsExportPort"] for node in ray.nodes() if node["Alive"] and node.get("MetricsExportPort")]
    assert ports, f"no node reports a metrics export port: {ray.nodes()}"
    return f"http://127.0.0.1:{ports[0]}/metrics"


def _scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ray_cortx_")
        for sample in family.samples
    ]


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series (worker process) whose labels include ``labels``."""
    return sum(value for n, ls, value in samples if n == name and all(ls.get(k) == v for k, v in labels.items()))


def _poll(url: str, ready: Callable[[Samples], bool], deadline_s: float) -> Samples:
    deadline = time.monotonic() + deadline_s
    samples: Samples = []
    while time.monotonic() < deadline:
        samples = _scrape(url)
        if ready(samples):
            return samples
        time.sleep(1.0)
    return samples


def test_runs_show_up_on_rays_metrics_endpoint(engine_sqlite_url: str, demo_services: Any, make_client: Any) -> None:
    from serve_app.demo_services import Fault

    pack_id = f"metrics-probe-{uuid.uuid4().hex[:8]}"
    client = make_client(engine_sqlite_url, demo_registry(demo_services.url))
    # A run that stays in flight (each attempt hangs until the call's 10 s timeout), so the
    # active-executions gauge has something to count while the others run and get scraped.
    hang = Fault(path="/echo/v1/hang", hang=True)
    demo_services.set_faults([hang, Fault(path="/echo/v1/probe", fail_first=1, status=503)])
    in_flight = client.start(_pack(f"metrics-hang-{uuid.uuid4().hex[:8]}", "/v1/hang", max_attempts=20), {})
    try:
        completed = client.run(_pack(pack_id), {}, timeout_s=120)  # 503, retried, then completes
        demo_services.set_faults([hang, Fault(path="/echo/v1/probe", fail_first=2, status=503)])
        failed = client.run(_pack(pack_id), {}, timeout_s=120)  # 503 twice: fails for good
        demo_services.set_faults([hang, Fault(path="/echo/v1/probe", delay_ms=3000)])
        timed_out = client.run(_pack(pack_id), {}, options={"timeout_seconds": 1}, timeout_s=120)
        samples = _poll(_metrics_url(), lambda s: _total(s, "ray_cortx_active_executions") >= 1, deadline_s=60)
        active_while_in_flight = _total(samples, "ray_cortx_active_executions")
    finally:
        client.cancel(in_flight)
        demo_services.set_faults([])
    assert active_while_in_flight >= 1, "the run in flight never showed in ray_cortx_active_executions"
    assert (completed["status"], failed["status"], timed_out["status"]) == ("completed", "failed", "failed"), (completed, failed)
    assert timed_out["error_detail"]["kind"] == "timeout"

    url = _metrics_url()
    p = {"workflow_pack_id": pack_id}

    def ready(samples: Samples) -> bool:
        return (
            _total(samples, "ray_cortx_executions_finished_total", **p) >= 3
            and _total(samples, "ray_cortx_execution_timeouts_total", **p) >= 1
            and _total(samples, "ray_cortx_step_retries_total", **p) >= 2
        )

    samples = _poll(url, ready, deadline_s=90)
    names = {name for name, _, _ in samples}
    assert ready(samples), f"the cortx series of {pack_id} did not reach {url} in 90 s; seen: {sorted(names)}"

    # Execution count and success/failure by status (FDD §10.1), exactly.
    assert _total(samples, "ray_cortx_executions_started_total", **p) == 3
    assert _total(samples, "ray_cortx_executions_finished_total", **p, status="completed") == 1
    assert _total(samples, "ray_cortx_executions_finished_total", **p, status="failed") == 2
    assert _total(samples, "ray_cortx_execution_timeouts_total", **p) == 1
    # Retries: the first run's 503 and the second run's first 503, both of kind http_status.
    assert _total(samples, "ray_cortx_step_retries_total", **p, error_kind="http_status") == 2

    # Execution time: one completed run, timed from start to end; the timed-out run took
    # about its 1 s timeout.
    assert _total(samples, "ray_cortx_execution_duration_seconds_count", **p, status="completed") == 1
    completed_s = _total(samples, "ray_cortx_execution_duration_seconds_sum", **p, status="completed")
    assert 0.0 < completed_s < 60.0
    failed_s = _total(samples, "ray_cortx_execution_duration_seconds_sum", **p, status="failed")
    assert 0.9 <= failed_s < 60.0
    inf_bucket = _total(samples, "ray_cortx_execution_duration_seconds_bucket", **p, status="completed", le="+Inf")
    assert inf_bucket == 1

    # Step time by type and status: no pack label (bounded labels), so at least ours.
    assert _total(samples, "ray_cortx_step_duration_seconds_count", step_type="service_call", status="completed") >= 1
    assert _total(samples, "ray_cortx_step_duration_seconds_count", step_type="service_call", status="failed") >= 3
    assert _total(samples, "ray_cortx_step_duration_seconds_count", step_type="condition", status="completed") >= 1

    # Checkpoint writes were timed, each operation.
    for operation in ("checkpoint", "current_step", "finish"):
        count = _total(samples, "ray_cortx_checkpoint_write_seconds_count", operation=operation)
        assert count >= 1, operation
        assert 0.0 < _total(samples, "ray_cortx_checkpoint_write_seconds_sum", operation=operation) < 60.0 * count

    # Gauges are per host process: whole numbers, never negative.
    assert "ray_cortx_active_executions" in names and "ray_cortx_overdue_executions" in names
    for name in ("ray_cortx_active_executions", "ray_cortx_overdue_executions"):
        values = [value for n, _, value in samples if n == name]
        assert all(value >= 0 and value == int(value) for value in values), (name, values)

    # No series carries an execution id or a step key as a label.
    for name, labels, _ in samples:
        assert not {"execution_id", "step_key", "step_id"} & set(labels), (name, labels)
        assert completed["execution_id"] not in labels.values()
