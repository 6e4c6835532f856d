"""Every example pack in examples/ runs on a real local Ray against the demo services.

One test per workflow pattern of the FDD (§7.1 to §8.3, and switch/while from §1.2): each
runs ``examples/<name>.yaml`` with ``examples/<name>.inputs.json`` (faults injected where the
example needs a failure) and asserts the behaviour the example is there to show, through the
run's record, its checkpoints and the demo services' call counters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry, stored_checkpoints

EXAMPLES = Path(__file__).parents[2] / "examples"
PATTERN_PACKS = [
    "sequential",
    "parallel",
    "conditional",
    "loop",
    "while-loop",
    "switch",
    "retry",
    "fallback",
    "compensation",
]
ALL_PACKS = sorted(p.stem for p in EXAMPLES.glob("*.yaml") if p.name != "services.yaml")


# --- helpers --------------------------------------------------------------------------------


def _inputs(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.inputs.json").read_text())




class _Run:
    """One run of an example: its record and the demo calls it made."""

    def __init__(
        self,
        execution_id: str,
        record: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        events: list[dict[str, Any]],
    ) -> None:
        self.execution_id = execution_id
        self.events = events
        self.record = record
        self.status = record["status"]
        self.outputs = record["outputs"]
        self.completed = record["completed_steps"]
        self._before, self._after = before, after

    def calls(self, path: str) -> int:
        """Calls to ``POST <path>`` made during the run."""
        key = f"POST {path}"
        return self._after["by_path"].get(key, 0) - self._before["by_path"].get(key, 0)

    def key_calls(self, step_key: str) -> int:
        """Calls that carried this run's Idempotency-Key of ``step_key``."""
        return self._after["by_idempotency_key"].get(f"{self.execution_id}/{step_key}", 0)

    def log(self) -> list[dict[str, Any]]:
        """This run's calls in arrival order (from the demo's log of recent calls)."""
        prefix = f"{self.execution_id}/"
        return [c for c in self._after["log"] if (c["idempotency_key"] or "").startswith(prefix)]

    def log_keys(self) -> list[str]:
        """Step keys of this run's calls, in arrival order."""
        return [c["idempotency_key"].split("/", 1)[1] for c in self.log()]

    def arrivals(self) -> dict[str, float]:
        """Arrival time (ms) at the demo services of each step key's last call."""
        return {c["idempotency_key"].split("/", 1)[1]: c["at_ms"] for c in self.log()}

    def event_at(self, kind: str, step_key: str) -> float:
        """Time (ms) of the engine's first ``kind`` event of ``step_key``."""
        return min(e["at"] for e in self.events if e["type"] == kind and e.get("step_key") == step_key) * 1000


@pytest.fixture
def run_example(engine_sqlite_url: str, demo_services: Any, make_client: Any) -> Iterator[Any]:
    """``run_example(name, inputs=None, faults=())``: run an example pack and return a :class:`_Run`.

    Faults are set on the session's demo services for the run and cleared afterwards.
    """
    # batch-scoring's task steps import examples.tasks: its header sets CORTX_TASK_MODULES so.
    client = make_client(engine_sqlite_url, demo_registry(demo_services.url), task_modules=("examples.tasks",))

    def run(name: str, inputs: dict[str, Any] | None = None, faults: list[Any] = ()) -> _Run:
        demo_services.set_faults(list(faults))
        try:
            before = demo_services.calls()
            execution_id = client.start(EXAMPLES / f"{name}.yaml", _inputs(name) if inputs is None else inputs)
            record = client.wait(execution_id, timeout_s=60)
            after = demo_services.calls()
        finally:
            demo_services.set_faults([])
        events = client.events(execution_id, 0, timeout_s=0.1)["events"]
        return _Run(execution_id, record, before, after, events)

    yield run
    demo_services.set_faults([])


# --- every example is a valid, documented pack ----------------------------------------------


def test_every_pattern_has_an_example() -> None:
    assert set(PATTERN_PACKS) <= set(ALL_PACKS)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ALL_PACKS)
def test_example_validates_against_the_example_registry(name: str) -> None:
    """What ``cortx-workflow validate examples/<name>.yaml`` checks, with services.yaml beside it."""
    from actors.registry import ServiceRegistry
    from dsl.validation import load_pack, validate_inputs

    registry = ServiceRegistry.load(str(EXAMPLES / "services.yaml"))
    path = EXAMPLES / f"{name}.yaml"
    loaded = load_pack(path.read_text(), str(path), services=registry.names())
    validate_inputs(loaded.pack, _inputs(name))  # the inputs file fits the pack's inputs schema
    assert loaded.pack.outputs, "an example declares its outputs"
    if name in PATTERN_PACKS:  # their header says how to run them
        header = path.read_text().split("\nid:", 1)[0]
        assert f"cortx-workflow run examples/{name}.yaml --inputs examples/{name}.inputs.json" in header


# --- FDD §7.1 sequential --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sequential_runs_each_step_after_the_one_before(run_example: Any) -> None:
    run = run_example("sequential")
    assert run.status == "completed", run.record
    assert run.outputs["identity_valid"] is True
    assert run.outputs["approved"] is True and run.outputs["risk"] == "low"
    assert run.outputs["ledger_entry"].startswith("le-")
    assert run.completed == ["step1", "step2", "step3"]
    # The calls reached the services in dependency order, one each.
    assert run.log_keys() == ["step1", "step2", "step3"]
    for path in ("/validation/v1/identity", "/compliance/v1/check", "/ledger/v1/entries"):
        assert run.calls(path) == 1


# --- FDD §7.2 parallel ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_parallel_group_calls_its_members_at_the_same_time(run_example: Any) -> None:
    from serve_app.demo_services import Fault

    members = ["validate-a", "validate-b", "validate-c"]
    paths = ["/validation/v1/identity", "/validation/v1/income", "/validation/v1/item"]

    # Each member answers 300 ms late. The engine starts all three at once and the step
    # after the group only when all three have completed.
    run = run_example("parallel", faults=[Fault(path=p, delay_ms=300) for p in paths])
    assert run.status == "completed", run.record
    assert run.outputs == {
        "identity_valid": True,
        "income_valid": True,
        "income_ratio": 0.25,
        "item_total": 2400.0,
        "all_valid": True,
        "ledger_entry": run.outputs["ledger_entry"],
    }
    assert run.outputs["ledger_entry"].startswith("le-")
    for path in paths:
        assert run.calls(path) == 1
    started = [run.event_at("step.started", m) for m in members]
    completed = [run.event_at("step.completed", m) for m in members]
    assert max(started) - min(started) < 250, started  # all started before any could answer
    assert run.event_at("step.started", "summarize") >= max(completed)
    assert run.completed.index("parallel-group") < run.completed.index("summarize")
    assert sorted(run.log_keys()[:3]) == members and run.log_keys()[3:] == ["summarize"]

    # The same at the services, with the fault of the example's header (1.5 s here). The run
    # above left enough Ray workers warm: a cold worker start (2 to 4 s on this machine)
    # delays a member's call and would look like serial execution.
    delay_ms = 1500
    slow = run_example("parallel", faults=[Fault(path=p, delay_ms=delay_ms) for p in paths])
    assert slow.status == "completed", slow.record
    arrivals = slow.arrivals()
    at = [arrivals[m] for m in members]
    # One after the other, the last member would arrive 2 * delay_ms after the first;
    # here all arrive before the first is answered.
    assert max(at) - min(at) < delay_ms, arrivals
    assert arrivals["summarize"] >= max(at) + delay_ms - 50, arrivals
    assert slow.record["duration_ms"] < 3 * delay_ms, slow.record


# --- FDD §7.3 condition ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_condition_takes_one_branch_and_skips_the_other(run_example: Any) -> None:
    high = run_example("conditional")  # 25,000: the then branch
    assert high.status == "completed", high.record
    assert high.outputs["branch"] == "then" and high.outputs["route"] == "manager"
    assert high.outputs["manager_approval"] == "completed" and high.outputs["auto_approve"] == "skipped"
    assert high.outputs["reviewer"] == "manager-on-duty"
    assert "manager-approval" in high.completed and "auto-approve" not in high.completed
    assert high.calls("/compliance/v1/manager-review") == 1
    assert high.calls("/ledger/v1/entries") == 1  # record-decision only

    low = run_example("conditional", {**_inputs("conditional"), "amount": 500})
    assert low.status == "completed", low.record
    assert low.outputs["branch"] == "else" and low.outputs["route"] == "automatic"
    assert low.outputs["manager_approval"] == "skipped" and low.outputs["auto_approve"] == "completed"
    assert low.outputs["reviewer"] is None
    assert "auto-approve" in low.completed and "manager-approval" not in low.completed
    assert low.calls("/compliance/v1/manager-review") == 0
    assert low.log_keys() == ["auto-approve", "record-decision"]


# --- FDD §7.4 loops -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_for_each_loop_runs_its_steps_once_per_item_in_order(run_example: Any) -> None:
    run = run_example("loop")
    assert run.status == "completed", run.record
    assert run.outputs["items_processed"] == 3
    assert run.outputs["first_item"] == {"sku": "LAPTOP-13", "valid": True, "total": 2400.0}
    assert run.outputs["last_total"] == 350.0
    entries = run.outputs["entries"]
    assert [sorted(e) for e in entries] == [["save-item", "validate-item"]] * 3
    assert all(e["save-item"]["entry_id"].startswith("le-") for e in entries)
    assert len({e["save-item"]["entry_id"] for e in entries}) == 3
    assert run.calls("/validation/v1/item") == 3 and run.calls("/ledger/v1/entries") == 3
    expected = [f"process-items[{i}]/{s}" for i in range(3) for s in ("validate-item", "save-item")]
    assert run.log_keys() == expected  # iterations in order, validate before save in each
    for key in expected:
        assert run.key_calls(key) == 1
    assert run.completed[-1] == "process-items"


@pytest.mark.timeout(60)
def test_while_loop_stops_when_its_condition_turns_false(run_example: Any) -> None:
    run = run_example("while-loop")
    assert run.status == "completed", run.record
    assert run.outputs == {"items_checked": 3, "all_valid": False, "first_invalid": "CABLE-HDMI"}
    assert run.calls("/validation/v1/item") == 3  # the fourth item is never checked
    assert run.log_keys() == [f"check-until-invalid[{i}]/check-next" for i in range(3)]

    # With only valid items it runs to the end of the list.
    items = [i for i in _inputs("while-loop")["items"] if i["quantity"] > 0]
    full = run_example("while-loop", {"items": items})
    assert full.status == "completed", full.record
    assert full.outputs == {"items_checked": 3, "all_valid": True, "first_invalid": None}


# --- FDD §1.2 switch ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_switch_runs_the_first_matching_case_or_the_default(run_example: Any) -> None:
    standard = run_example("switch")  # 25,000: case 1
    assert standard.status == "completed", standard.record
    assert standard.outputs == {
        "case": 1,
        "route": "standard",
        "senior_review": "skipped",
        "standard_check": "completed",
        "fast_track": "skipped",
        "risk": "high",
    }
    assert standard.log_keys() == ["standard-check", "record-route"]

    # 250,000 matches cases 0 and 1: the first one wins.
    senior = run_example("switch", {**_inputs("switch"), "amount": 250000})
    assert senior.status == "completed", senior.record
    assert senior.outputs["case"] == 0 and senior.outputs["route"] == "senior"
    assert senior.outputs["standard_check"] == "skipped" and senior.outputs["fast_track"] == "skipped"
    assert senior.log_keys() == ["senior-review", "senior-check", "record-route"]

    fast = run_example("switch", {**_inputs("switch"), "amount": 500})
    assert fast.status == "completed", fast.record
    assert fast.outputs["case"] == "default" and fast.outputs["route"] == "fast-track"
    assert fast.outputs["fast_track"] == "completed" and fast.outputs["risk"] == "low"
    assert fast.calls("/compliance/v1/check") == 0 and fast.calls("/compliance/v1/manager-review") == 0
    assert fast.log_keys() == ["fast-track", "record-route"]


# --- FDD §8.1 retry -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_retry_backs_off_exponentially_with_one_idempotency_key(
    run_example: Any, engine_sqlite_url: str
) -> None:
    from serve_app.demo_services import parse_fault

    # The fault of the example's header: the first 2 calls answer 503.
    run = run_example("retry", faults=[parse_fault("/validation/v1/income=2:503")])
    assert run.status == "completed", run.record
    assert run.outputs["income_valid"] is True and run.outputs["ratio"] == 1.875
    assert run.outputs["ledger_entry"].startswith("le-")
    assert run.calls("/validation/v1/income") == 3
    assert run.key_calls("income-check") == 3  # every attempt carries the same key
    assert run.key_calls("record-result") == 1
    attempts = sorted(
        (cp.attempt, cp.status) for cp in stored_checkpoints(engine_sqlite_url, run.execution_id) if cp.step_key == "income-check"
    )
    assert attempts == [(1, "failed"), (2, "failed"), (3, "completed")]
    at = [c["at_ms"] for c in run.log() if c["path"] == "/validation/v1/income"]
    gaps = [b - a for a, b in zip(at, at[1:])]
    # initial_delay_ms 1000, multiplier 2: about 1 s, then about 2 s.
    assert 950 <= gaps[0] < 1900 and 1950 <= gaps[1] < 3500, gaps


# --- FDD §8.2 fallback ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_fallback_replaces_a_step_that_failed_for_good(run_example: Any, engine_sqlite_url: str) -> None:
    from serve_app.demo_services import parse_fault

    run = run_example("fallback", faults=[parse_fault("/compliance/v1/check=1000:503")])
    assert run.status == "completed", run.record
    assert run.outputs["risk"] == "manual-review" and run.outputs["approved"] is True
    assert run.outputs["recovered"] is True and "503" in run.outputs["recovered_from"]
    assert run.calls("/compliance/v1/check") == 2  # max_attempts 2, then the fallback
    assert run.calls("/compliance/v1/manager-review") == 1
    assert run.log_keys() == ["compliance-check", "compliance-check", "send-alert", "log-error", "record-decision"]
    assert run.completed.index("log-error") < run.completed.index("compliance-check") < run.completed.index(
        "record-decision"
    )
    recovered = [
        cp for cp in stored_checkpoints(engine_sqlite_url, run.execution_id)
        if cp.step_key == "compliance-check" and cp.status == "completed"
    ]
    assert len(recovered) == 1 and recovered[0].error["kind"] == "recovered_by_fallback"
    assert recovered[0].outputs["risk"] == "manual-review"

    # Without the fault the primary answers and the fallback never runs.
    clean = run_example("fallback")
    assert clean.status == "completed", clean.record
    assert clean.outputs["risk"] == "high" and clean.outputs["recovered"] is False
    assert clean.outputs["recovered_from"] is None
    assert clean.calls("/compliance/v1/manager-review") == 0
    assert clean.log_keys() == ["compliance-check", "record-decision"]


# --- FDD §8.3 compensation ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_compensation_undoes_completed_steps_latest_first(run_example: Any) -> None:
    from serve_app.demo_services import parse_fault

    run = run_example("compensation", faults=[parse_fault("/compliance/v1/check=1000:403")])
    assert run.status == "failed", run.record
    detail = run.record["error_detail"]
    assert detail["step"] == "confirm-transfer" and detail["kind"] == "http_status" and detail["attempts"] == 1
    assert "compensation_errors" not in detail
    assert run.calls("/compliance/v1/check") == 1  # a 403 is not retried
    # Forward steps, then the compensations: targeted ones latest-completed target first
    # (rollback-step-2 undoes debit-source, rollback-step-1 reserve-funds), reverse-credit
    # left out (credit-target never ran), then the untargeted notify-failure.
    assert run.log_keys() == [
        "reserve-funds",
        "debit-source",
        "confirm-transfer",
        "rollback-step-2",
        "rollback-step-1",
        "notify-failure",
    ]
    assert run.completed == ["reserve-funds", "debit-source", "rollback-step-2", "rollback-step-1", "notify-failure"]
    assert run.key_calls("reverse-credit") == 0 and run.key_calls("credit-target") == 0
    assert run.calls("/ledger/v1/entries") == 5

    # Without the fault the saga completes and nothing is compensated.
    clean = run_example("compensation")
    assert clean.status == "completed", clean.record
    assert all(clean.outputs[k].startswith("le-") for k in ("reservation", "debit", "credit"))
    assert clean.log_keys() == ["reserve-funds", "debit-source", "confirm-transfer", "credit-target"]


# --- Python tasks on the cluster ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_batch_scoring_scores_items_as_parallel_ray_tasks(run_example: Any, engine_sqlite_url: str) -> None:
    from examples.tasks import score_item

    inputs = _inputs("batch-scoring")
    run = run_example("batch-scoring")
    assert run.status == "completed", run.record
    expected = [score_item(item) for item in inputs["items"]]  # the same function, here in the test
    assert [entry["score"] for entry in run.outputs["scores"]] == expected
    assert run.outputs["approved"] == [s["id"] for s in expected if s["score"] >= 0.9]
    assert run.outputs["rejected"] == [s["id"] for s in expected if s["score"] < 0.9]
    assert set(run.outputs["approved"]) == {"APP-101", "APP-105", "APP-107"}
    assert run.outputs["mean_score"] == round(sum(s["score"] for s in expected) / len(expected), 4)
    assert run.calls("/validation/v1/item") == 0  # no service was called: the work ran as Python tasks

    checkpoints = [
        cp for cp in stored_checkpoints(engine_sqlite_url, run.execution_id) if cp.step_key.startswith("score-items[")
    ]
    assert len(checkpoints) == 8 and all(cp.status == "completed" and cp.step_type == "task" for cp in checkpoints)
    assert all(cp.node_id for cp in checkpoints)  # each ran as a Ray task on a node of the cluster
    # max_concurrency 4: several iterations' tasks were in flight at once, never more than 4.
    spans = sorted((cp.started_at, cp.ended_at) for cp in checkpoints)
    in_flight = [sum(1 for s, e in spans if s <= start < e) for start, _ in spans]
    assert 2 <= max(in_flight) <= 4, spans
