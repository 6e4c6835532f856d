"""The scheduler and ExecutionActor without Ray: MemoryStore, threads, the real demo services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from actors.execution import ExecutionActor
from actors.runners import ThreadStepRunner
from actors.settings import Settings
from dsl.errors import FencedError
from dsl.validation import validate_document
from persistence.records import StepCheckpoint
from persistence.store import MemoryStore
from serve_app.demo_services import Fault, start_in_thread
from tests.conftest import demo_registry

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def demo() -> Iterator[Any]:
    server = start_in_thread(port=0)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_demo(demo: Any) -> None:
    demo.reset()
    demo.set_faults([])


def call(step_id: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "service_call", "service": "echo", "endpoint": path, **extra}


def pack(*steps: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "t", "name": "t", "version": "1", "steps": list(steps), "outputs": outputs or {}}


class Harness:
    """One store, one registry; runs packs through ExecutionActors."""

    def __init__(self, demo: Any, **settings: Any) -> None:
        self.store = MemoryStore()
        self.registry = demo_registry(demo.url)
        self.settings = Settings(database_url="memory://", **settings)
        self.sleeps: list[float] = []

    async def create(self, document: dict[str, Any], inputs: dict[str, Any] | None = None, **options: Any) -> str:
        validate_document(document)
        execution_id = str(uuid.uuid4())
        await self.store.create_execution(
            execution_id=execution_id, workflow_pack_id="t", version="1", pack_document=document,
            inputs=inputs or {}, options=options,
        )
        return execution_id

    def actor(self, execution_id: str) -> ExecutionActor:
        return ExecutionActor(execution_id, store=self.store, registry=self.registry, settings=self.settings,
                              runner=ThreadStepRunner())

    async def run(self, document: dict[str, Any], inputs: dict[str, Any] | None = None, **options: Any) -> tuple[dict[str, Any], ExecutionActor]:
        actor = self.actor(await self.create(document, inputs, **options))
        return await actor.run(), actor


def events(actor: ExecutionActor) -> list[tuple[str, str]]:
    return [(e["type"], e.get("step_key", "")) for e in actor._events if e["type"].startswith("step.")]


def max_in_flight(actor: ExecutionActor, prefix: str = "") -> int:
    live = peak = 0
    for kind, key in events(actor):
        if not key.startswith(prefix) or kind not in {"step.started", "step.completed", "step.failed"}:
            continue
        if key.endswith(("group", "each")):
            continue
        live += 1 if kind == "step.started" else -1
        peak = max(peak, live)
    return peak


def test_independent_steps_run_concurrently_and_dependents_wait(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", delay_ms=300)])
    h = Harness(demo)
    doc = pack(
        {"id": "group", "type": "parallel", "steps": [call("a", "/v1/identity"), call("b", "/v1/identity"),
                                                       call("c", "/v1/identity")]},
        call("after", "/v1/identity", dependencies=["group"]),
    )
    record, actor = asyncio.run(h.run(doc))
    assert record["status"] == "completed"
    assert max_in_flight(actor) == 3
    order = record["completed_steps"]
    assert order.index("group") < order.index("after") and set(order[:3]) == {"a", "b", "c"}


def test_max_parallel_steps_caps_work_in_flight(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", delay_ms=100)])
    h = Harness(demo, max_parallel_steps=1)
    doc = pack({"id": "group", "type": "parallel", "steps": [call(f"s{i}", "/v1/identity") for i in range(4)]})
    record, actor = asyncio.run(h.run(doc))
    assert record["status"] == "completed"
    # Steps may be "started" while they wait for a slot; calls in flight at the service are what is capped.
    log = demo.calls()["log"]
    assert len(log) == 4


def test_loop_runs_items_in_order_by_default_and_concurrently_when_asked(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/item", delay_ms=100)])
    h = Harness(demo)
    body = [call("check", "/v1/item", inputs={"sku": "${ item }", "quantity": "${ index + 1 }", "unit_price": 1})]
    doc = pack({"id": "each", "type": "loop", "collection": "inputs.skus", "steps": body},
               outputs={"totals": "${ length(steps.each.outputs) }", "first": "${ steps.each.outputs[0].check.body.sku }"})
    record, actor = asyncio.run(h.run(doc, {"skus": ["a", "b", "c", "d"]}))
    assert record["outputs"] == {"totals": 4, "first": "a"}
    assert max_in_flight(actor, "each[") == 1
    keys = [k for kind, k in events(actor) if kind == "step.completed" and k.startswith("each[")]
    assert keys == [f"each[{i}]/check" for i in range(4)]

    doc["steps"][0]["max_concurrency"] = 2
    record, actor = asyncio.run(h.run(doc, {"skus": ["a", "b", "c", "d"]}))
    assert record["status"] == "completed" and max_in_flight(actor, "each[") == 2


def test_empty_loop_completes_with_an_empty_list_and_bounds_are_enforced(demo: Any) -> None:
    h = Harness(demo)
    doc = pack({"id": "each", "type": "loop", "collection": "inputs.skus", "max_iterations": 2,
                "steps": [call("check", "/v1/item")]}, outputs={"n": "${ length(steps.each.outputs) }"})
    record, _ = asyncio.run(h.run(doc, {"skus": []}))
    assert record["status"] == "completed" and record["outputs"] == {"n": 0}
    assert demo.calls()["total"] == 0
    record, _ = asyncio.run(h.run(doc, {"skus": [1, 2, 3]}))
    assert record["status"] == "failed" and "max_iterations" in record["error"]
    assert record["error_detail"]["step"] == "each"


def test_condition_must_be_boolean(demo: Any) -> None:
    h = Harness(demo)
    doc = pack({"id": "route", "type": "condition", "condition": "inputs.flag",
                "then": [call("yes", "/v1/identity")], "else": [call("no", "/v1/identity")]})
    record, _ = asyncio.run(h.run(doc, {"flag": "false"}))
    assert record["status"] == "failed" and "must be true or false" in record["error"]
    assert demo.calls()["total"] == 0
    record, _ = asyncio.run(h.run(doc, {"flag": False}))
    assert record["status"] == "completed" and record["completed_steps"] == ["no", "route"]


def test_retry_delays_follow_the_policy_and_retry_after(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", fail_first=3, status=503)])
    h = Harness(demo)
    retry = {"max_attempts": 4, "backoff": "exponential", "initial_delay_ms": 10, "multiplier": 3, "max_delay_ms": 50}
    record, actor = asyncio.run(h.run(pack(call("a", "/v1/identity", on_error={"retry": retry}))))
    assert record["status"] == "completed"
    delays = [e["delay_ms"] for e in actor._events if e["type"] == "step.retrying"]
    assert delays == [10, 30, 50]

    demo.reset()
    demo.set_faults([Fault(path="/echo/v1/identity", fail_first=1, status=429, retry_after_s=1)])
    record, actor = asyncio.run(h.run(pack(call("a", "/v1/identity", on_error={"retry": retry}))))
    assert [e["delay_ms"] for e in actor._events if e["type"] == "step.retrying"] == [50]  # Retry-After, capped


def test_4xx_is_not_retried_but_can_be_asked_for(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", fail_first=1, status=409)])
    h = Harness(demo)
    fast = {"max_attempts": 3, "initial_delay_ms": 1, "max_delay_ms": 1}
    record, _ = asyncio.run(h.run(pack(call("a", "/v1/identity", on_error={"retry": fast}))))
    assert record["status"] == "failed" and record["error_detail"]["attempts"] == 1 and "409" in record["error"]
    demo.reset()
    asked = {**fast, "retry_on": ["http_4xx"]}
    record, _ = asyncio.run(h.run(pack(call("a", "/v1/identity", on_error={"retry": asked}))))
    assert record["status"] == "completed"


def test_options_max_retries_applies_to_steps_without_a_policy(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", fail_first=10, status=500)])
    h = Harness(demo)
    record, _ = asyncio.run(h.run(pack(call("a", "/v1/identity")), max_retries=0))
    assert record["error_detail"]["attempts"] == 1
    assert demo.calls()["by_path"]["POST /echo/v1/identity"] == 1


def test_step_timeout_is_enforced_outside_the_call(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", hang=True)])
    h = Harness(demo)
    record, _ = asyncio.run(h.run(pack(call("a", "/v1/identity", timeout_seconds=0.5)), max_retries=0))
    assert record["status"] == "failed" and record["error_detail"]["kind"] == "timeout"


class CancelAsTheCallEnds(ThreadStepRunner):
    """The real runner; on its ``at``-th call it asks for the run's cancel just before the
    call returns: the tick in which a cancel from the host meets a completing attempt."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.calls = 0
        self.actor: ExecutionActor | None = None

    async def call_service(self, request: Any) -> dict[str, Any]:
        result = await super().call_service(request)
        self.calls += 1
        if self.calls == self.at:
            assert self.actor is not None and self.actor.cancel()
        return result


def test_a_cancel_that_lands_as_an_attempt_completes_ends_the_run(demo: Any) -> None:
    """A cancel meeting a completing attempt used to be dropped (Python 3.11's wait_for):
    the run went on retrying until its attempts ran out and ended failed."""
    demo.set_faults([Fault(path="/echo/v1/identity", fail_first=1000, status=503)])
    h = Harness(demo)
    retry = {"max_attempts": 30, "backoff": "fixed", "initial_delay_ms": 1}
    runner = CancelAsTheCallEnds(at=3)

    async def scenario() -> dict[str, Any]:
        execution_id = await h.create(pack(call("a", "/v1/identity", timeout_seconds=30, on_error={"retry": retry})))
        actor = ExecutionActor(execution_id, store=h.store, registry=h.registry, settings=h.settings, runner=runner)
        runner.actor = actor
        return await actor.run()

    record = asyncio.run(scenario())
    assert record["status"] == "cancelled", record
    assert runner.calls == 3 and demo.calls()["by_path"]["POST /echo/v1/identity"] == 3


def test_run_timeout_fails_the_run(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/identity", hang=True)])
    h = Harness(demo)
    record, _ = asyncio.run(h.run(pack(call("a", "/v1/identity")), timeout_seconds=0.5))
    assert record["status"] == "failed" and "timed out after 0.5 s" in record["error"]


def test_resume_skips_completed_steps_and_fences_the_old_owner(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/income", hang=True)])
    h = Harness(demo)
    doc = pack(call("first", "/v1/identity"), call("second", "/v1/income", dependencies=["first"]),
               outputs={"first": "${ steps.first.outputs.path }"})

    async def scenario() -> tuple[dict[str, Any], ExecutionActor]:
        execution_id = await h.create(doc)
        old = h.actor(execution_id)
        task = asyncio.create_task(old.run())
        for _ in range(200):
            if "first" in (await h.store.get_execution(execution_id)).completed_steps and old._started_keys >= {"second"}:
                break
            await asyncio.sleep(0.02)
        task.cancel()  # the owner dies mid-step (not a cancel request: the run stays running)
        await asyncio.gather(task, return_exceptions=True)
        assert (await h.store.get_execution(execution_id)).status == "running"
        demo.set_faults([])
        new = h.actor(execution_id)
        record = await new.run()
        stale = StepCheckpoint(execution_id=execution_id, step_key="x", attempt=1, step_id="x", step_type="service_call",
                               status="completed", outputs=None, error=None, idempotency_key=None,
                               started_at=record_time(), ended_at=record_time())
        with pytest.raises(FencedError):
            await h.store.write_checkpoint(stale, owner_epoch=old._epoch)
        return record, new

    record, new = asyncio.run(scenario())
    assert record["status"] == "completed" and record["outputs"] == {"first": "/echo/v1/identity"}
    assert demo.calls()["by_path"]["POST /echo/v1/identity"] == 1  # not run again
    assert record["completed_steps"] == ["first", "second"]
    assert ("step.started", "first") not in events(new)


def record_time() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def saga(gift: bool) -> dict[str, Any]:
    """Case 22 (fault catalogue: compensation order and scope), in our DSL, on the echo service."""
    return pack(
        call("reserve-stock", "/v1/reserve"),
        call("charge-card", "/v1/charge", dependencies=["reserve-stock"]),
        {"id": "gift-check", "type": "condition", "condition": "inputs.gift == true", "dependencies": ["charge-card"],
         "then": [call("wrap-gift", "/v1/wrap")], "else": []},
        call("book-shipping", "/v1/book", dependencies=["gift-check"], on_error={
            "retry": {"max_attempts": 1},
            "compensate": [
                call("release-stock", "/v1/release", compensates="reserve-stock"),
                call("refund-card", "/v1/refund", compensates="charge-card",
                     inputs={"charged": "${ steps.charge-card.outputs.path }"}),
                call("unwrap-gift", "/v1/unwrap", compensates="wrap-gift"),
            ],
        }),
    )


def paths(demo: Any) -> list[str]:
    return [entry["path"] for entry in demo.calls()["log"]]


@pytest.mark.parametrize("gift", [False, True])
def test_compensation_undoes_only_what_completed_in_reverse_order(demo: Any, gift: bool) -> None:
    demo.set_faults([Fault(path="/echo/v1/book", fail_first=100, status=409)])
    h = Harness(demo)
    record, _ = asyncio.run(h.run(saga(gift), {"gift": gift}))
    assert record["status"] == "failed"
    assert record["error_detail"]["step"] == "book-shipping" and "409" in record["error"]
    undo = [p for p in paths(demo) if p in {"/echo/v1/unwrap", "/echo/v1/refund", "/echo/v1/release"}]
    expected = ["/echo/v1/refund", "/echo/v1/release"]
    assert undo == (["/echo/v1/unwrap", *expected] if gift else expected)
    assert "refund-card" in record["completed_steps"]


def test_failed_compensation_is_recorded_and_the_others_still_run(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/book", fail_first=100, status=409),
                     Fault(path="/echo/v1/refund", fail_first=100, status=500)])
    h = Harness(demo)
    record, _ = asyncio.run(h.run(saga(False), {"gift": False}, max_retries=0))
    assert record["status"] == "failed"
    assert "book-shipping" in record["error"] and "refund-card" in record["error"]
    assert paths(demo).count("/echo/v1/release") == 1
    assert record["error_detail"]["compensation_errors"][0]["step"] == "refund-card"


def price_pack() -> dict[str, Any]:
    """Case 21 (fault catalogue: fallback output propagation), in our DSL, on the echo service."""
    return pack(
        call("fetch-price", "/v1/price", inputs={"price": 12.5},
             outputs={"price": "${ result.body.price }", "source": "primary"},
             on_error={"retry": {"max_attempts": 1},
                       "fallback": [call("default-price", "/v1/default", inputs={"price": 0, "source": "fallback"},
                                         outputs={"price": "${ result.body.price }",
                                                  "source": "${ result.body.source }"})]}),
        call("quote", "/v1/quote", dependencies=["fetch-price"], inputs={
            "price": "${ steps.fetch-price.outputs.price }",
            "price_source": "${ steps.fetch-price.outputs.source }",
            "error_status": "${ defined(steps.fetch-price.error.status) ? steps.fetch-price.error.status : null }",
        }),
        outputs={"price": "${ steps.fetch-price.outputs.price }",
                 "degraded": "${ steps.fetch-price.outputs.source == 'fallback' }"},
    )


def quote_bodies(demo: Any) -> list[Any]:
    return [e for e in demo.calls()["log"] if e["path"] == "/echo/v1/quote"]


def test_fallback_outputs_flow_downstream_with_the_error_visible(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/price", fail_first=100, status=503)])
    h = Harness(demo)
    record, actor = asyncio.run(h.run(price_pack()))
    assert record["status"] == "completed", record["error"]
    assert record["outputs"] == {"price": 0, "degraded": True}
    assert len(quote_bodies(demo)) == 1
    quote = [e for e in actor._events if e.get("step_key") == "quote" and e["type"] == "step.completed"]
    assert quote
    assert paths(demo).count("/echo/v1/price") == 1 and paths(demo).count("/echo/v1/default") == 1


def test_without_failure_the_fallback_does_not_run(demo: Any) -> None:
    h = Harness(demo)
    record, _ = asyncio.run(h.run(price_pack()))
    assert record["outputs"] == {"price": 12.5, "degraded": False}
    assert "/echo/v1/default" not in paths(demo)


def test_fallback_checkpoint_says_recovered(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/price", fail_first=100, status=503)])
    h = Harness(demo)

    async def scenario() -> list[Any]:
        record, actor = await h.run(price_pack())
        return await h.store.load_checkpoints(record["execution_id"])

    checkpoints = {(cp.step_key, cp.attempt): cp for cp in asyncio.run(scenario())}
    assert checkpoints[("fetch-price", 1)].status == "failed"
    recovered = checkpoints[("fetch-price", 2)]
    assert recovered.status == "completed" and recovered.error["kind"] == "recovered_by_fallback"
    assert recovered.error["cause"]["status"] == 503 and recovered.outputs == {"price": 0, "source": "fallback"}


def test_handled_locally_the_run_goes_on(demo: Any) -> None:
    demo.set_faults([Fault(path="/echo/v1/optional", fail_first=100, status=500)])
    h = Harness(demo)
    doc = pack(
        call("optional", "/v1/optional", on_error={"retry": {"max_attempts": 1}, "propagate": False}),
        call("next", "/v1/next", dependencies=["optional"], inputs={"prior": "${ steps.optional.status }"}),
        outputs={"prior": "${ steps.next.outputs.body.prior }"},
    )
    record, _ = asyncio.run(h.run(doc))
    assert record["status"] == "completed" and record["outputs"] == {"prior": "failed"}
    assert "optional" not in record["completed_steps"]


def test_switch_runs_the_first_true_case_else_default(demo: Any) -> None:
    h = Harness(demo)
    doc = pack({"id": "route", "type": "switch", "cases": [
        {"when": "inputs.amount > 1000", "steps": [call("big", "/v1/big")]},
        {"when": "inputs.amount > 100", "steps": [call("medium", "/v1/medium")]},
    ], "default": [call("small", "/v1/small")]}, outputs={"case": "${ steps.route.outputs.case }"})
    for amount, case, ran in ((5000, 0, "big"), (500, 1, "medium"), (5, "default", "small")):
        record, _ = asyncio.run(h.run(doc, {"amount": amount}))
        assert record["outputs"] == {"case": case}
        assert [k for k in record["completed_steps"] if k != "route"] == [ran]
    record, _ = asyncio.run(h.run(doc, {"amount": "5000"}))
    assert record["status"] == "failed" and "cannot compare" in record["error"]


def test_while_loop_runs_until_its_condition_is_false_and_is_bounded(demo: Any) -> None:
    h = Harness(demo)
    body = [call("poll", "/v1/poll", inputs={"attempt": "${ index }"})]
    doc = pack({"id": "until", "type": "loop", "max_iterations": 10,
                "condition": "not defined(steps.poll.outputs) or steps.poll.outputs.body.attempt < 3",
                "steps": body}, outputs={"n": "${ length(steps.until.outputs) }"})
    record, actor = asyncio.run(h.run(doc))
    assert record["status"] == "completed" and record["outputs"] == {"n": 4}
    # completed_steps lists the pack's steps, not the iterations: those are in the step history
    assert record["completed_steps"] == ["until"]
    history = asyncio.run(h.store.load_checkpoints(actor.execution_id))
    assert [c.step_key for c in history if c.status == "completed"][:2] == ["until[0]/poll", "until[1]/poll"]
    doc["steps"][0]["condition"] = "true"
    doc["steps"][0]["max_iterations"] = 3
    record, _ = asyncio.run(h.run(doc))
    assert record["status"] == "failed" and "max_iterations 3" in record["error"]
    assert paths(demo).count("/echo/v1/poll") == 4 + 3


def test_loops_without_a_bound_use_the_configured_default(demo: Any) -> None:
    h = Harness(demo, max_loop_iterations=2)
    doc = pack({"id": "each", "type": "loop", "collection": "inputs.xs", "steps": [call("x", "/v1/x")]})
    record, _ = asyncio.run(h.run(doc, {"xs": [1, 2, 3]}))
    assert record["status"] == "failed" and "more than max_iterations 2" in record["error"]
    assert demo.calls()["total"] == 0


def test_set_context_shares_variables_with_later_steps_and_is_stored(demo: Any) -> None:
    h = Harness(demo)
    doc = pack(
        call("lookup", "/v1/lookup", inputs={"tier": "gold"}, set_context={"tier": "${ outputs.body.tier }"}),
        call("use", "/v1/use", dependencies=["lookup"], inputs={"tier": "${ context.tier }"},
             set_context={"used": "${ context.tier + '!' }"}),
        outputs={"tier": "${ steps.use.outputs.body.tier }", "used": "${ context.used }"},
    )

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        record, _ = await h.run(doc)
        stored = await h.store.get_execution(record["execution_id"])
        return record, stored.context

    record, context = asyncio.run(scenario())
    assert record["outputs"] == {"tier": "gold", "used": "gold!"}
    assert context == {"tier": "gold", "used": "gold!"}


def test_outputs_too_large_fail_the_step_clearly(demo: Any) -> None:
    h = Harness(demo)
    blob = {name: "${ 'x' * 900000 }" for name in ("a", "b", "c")}
    record, _ = asyncio.run(h.run(pack(call("big", "/v1/big", inputs=blob)), max_retries=0))
    assert record["status"] == "failed" and record["error_detail"]["kind"] == "output_too_large"
    assert "limit of 2097152 bytes" in record["error"]
