"""The event outbox in the store (``persistence.outbox``): SQLite, PostgreSQL and MemoryStore.

No Ray. Proves that events are written in the transaction of the state change they
describe (a fenced write, a duplicate checkpoint and a refused finish leave none), that
``seq`` is gap-free per run even with concurrent writers, and that delivery cursors only
move forward.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from dsl.errors import FencedError
from persistence.outbox import NewEvent, event_id
from persistence.records import utc_now
from tests.conftest import with_store
from tests.integration.test_store import checkpoint, new_run


def _kinds(events: list) -> list[tuple]:
    return [(e.seq, e.type, e.step_key, e.attempt) for e in events]


def test_several_events_of_one_write_get_consecutive_seqs_in_their_order(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        owned = await store.claim_execution(run.execution_id)  # seq 1
        many = [NewEvent("step.started", "a", 1), NewEvent("custom.one", "a", 1, {"i": 1}),
                NewEvent("custom.two", "a", 1, {"i": 2}), NewEvent("step.completed", "a", 1)]
        assert await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=owned.owner_epoch,
                                            completed_step="a", events=many)
        await store.append_events(run.execution_id, owner_epoch=owned.owner_epoch,
                                  events=[NewEvent("custom.three", None, None), NewEvent("custom.four", None, None)])
        assert [(e.seq, e.type) for e in await store.load_events(run.execution_id)] == [
            (1, "execution.started"), (2, "step.started"), (3, "custom.one"), (4, "custom.two"),
            (5, "step.completed"), (6, "custom.three"), (7, "custom.four"),
        ]

    with_store(store_url, body)


def test_lifecycle_events_are_written_with_their_state_change(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        assert await store.load_events(run.execution_id) == []
        owned = await store.claim_execution(run.execution_id)
        await store.set_current_step(run.execution_id, owner_epoch=owned.owner_epoch, step_key="a",
                                     events=[NewEvent("step.started", "a", 1, {"step_type": "task"})])
        done = [NewEvent("step.completed", "a", 1, {"duration_ms": 25})]
        assert await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=owned.owner_epoch,
                                            completed_step="a", events=done)
        # The same checkpoint again (an ambiguous commit retried): first write wins, no second event.
        assert not await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=owned.owner_epoch,
                                                completed_step="a", events=done)
        await store.append_events(run.execution_id, owner_epoch=owned.owner_epoch,
                                  events=[NewEvent("step.retrying", "b", 1, {"delay_ms": 10})])
        await store.finish_execution(run.execution_id, owner_epoch=owned.owner_epoch, status="failed",
                                     error="boom", error_detail={"step": "b", "kind": "http_5xx", "message": "boom"})
        # A second finish is a no-op: no second final event.
        await store.finish_execution(run.execution_id, owner_epoch=owned.owner_epoch, status="completed")
        events = await store.load_events(run.execution_id)
        assert _kinds(events) == [
            (1, "execution.started", None, None),
            (2, "step.started", "a", 1),
            (3, "step.completed", "a", 1),
            (4, "step.retrying", "b", 1),
            (5, "execution.failed", None, None),
        ]
        assert events[2].payload == {"duration_ms": 25}
        assert events[4].payload == {"error": "boom", "step": "b", "kind": "http_5xx"}
        assert events[0].to_dict()["event_id"] == event_id(run.execution_id, 1)
        assert [e.seq for e in await store.load_events(run.execution_id, after=3)] == [4, 5]
        assert [e.seq for e in await store.load_events(run.execution_id, after=1, limit=2)] == [2, 3]

    with_store(store_url, body)


def test_a_fenced_write_leaves_no_event(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        old = await store.claim_execution(run.execution_id)
        new = await store.claim_execution(run.execution_id)  # another owner took over
        assert new.owner_epoch == old.owner_epoch + 1
        stale = [NewEvent("step.completed", "a", 1)]
        with pytest.raises(FencedError):
            await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=old.owner_epoch, events=stale)
        with pytest.raises(FencedError):
            await store.set_current_step(run.execution_id, owner_epoch=old.owner_epoch, step_key="a",
                                         events=[NewEvent("step.started", "a", 1)])
        with pytest.raises(FencedError):
            await store.append_events(run.execution_id, owner_epoch=old.owner_epoch,
                                      events=[NewEvent("step.retrying", "a", 1)])
        with pytest.raises(FencedError):
            await store.finish_execution(run.execution_id, owner_epoch=old.owner_epoch, status="completed")
        assert _kinds(await store.load_events(run.execution_id)) == [
            (1, "execution.started", None, None),
            (2, "execution.resumed", None, None),
        ]
        assert (await store.load_checkpoints(run.execution_id)) == []

    with_store(store_url, body)


def test_a_queued_run_cancelled_gets_its_final_event(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="queued")
        assert (await store.claim_execution(run.execution_id)).owner_epoch == 0  # not admitted: no event
        assert await store.cancel_queued(run.execution_id) is not None
        events = await store.load_events(run.execution_id)
        assert [(e.seq, e.type) for e in events] == [(1, "execution.cancelled")]

    with_store(store_url, body)


def test_concurrent_writers_get_gap_free_seq(store_url: str) -> None:
    """Many concurrent writes of one run (one owner, as the scheduler does): seq 1..n, no gap, no repeat."""

    async def body(store) -> None:
        run = await new_run(store, status="running")
        epoch = (await store.claim_execution(run.execution_id)).owner_epoch

        async def one(i: int) -> None:
            await store.write_checkpoint(checkpoint(run.execution_id, f"s{i}"), owner_epoch=epoch,
                                         events=[NewEvent("step.started", f"s{i}", 1, {"n": i}),
                                                 NewEvent("step.completed", f"s{i}", 1)])
            await store.append_events(run.execution_id, owner_epoch=epoch,
                                      events=[NewEvent("step.retrying", f"s{i}", 1), NewEvent("x.y", f"s{i}", 1)])

        await asyncio.gather(*(one(i) for i in range(12)))
        events = await store.load_events(run.execution_id)
        assert [e.seq for e in events] == list(range(1, 1 + 1 + 48))
        assert sorted(e.step_key for e in events if e.type == "step.completed") == sorted(f"s{i}" for i in range(12))
        # The events of one write keep their order, fields and payload.
        for i in range(12):
            mine = [e for e in events if e.step_key == f"s{i}"]
            assert [(e.type, e.attempt) for e in mine] == [
                ("step.started", 1), ("step.completed", 1), ("step.retrying", 1), ("x.y", 1)]
            assert mine[0].payload == {"n": i} and mine[1].payload == {}

    with_store(store_url, body)


def test_bad_events_are_refused_before_anything_is_written(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        epoch = (await store.claim_execution(run.execution_id)).owner_epoch
        for bad, field in ((NewEvent("Not A Type"), "events[0].type"), (NewEvent("a.b", attempt=0), "events[0].attempt"),
                           (NewEvent("a.b", payload={"x": float("nan")}), "JSON")):
            with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
                await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=epoch, events=[bad])
        assert (await store.load_checkpoints(run.execution_id)) == []
        assert [e.type for e in await store.load_events(run.execution_id)] == ["execution.started"]

    with_store(store_url, body)


def test_delivery_cursors_move_forward_and_keep_retry_state(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        await store.claim_execution(run.execution_id)
        eid = run.execution_id
        heads = {h.execution_id: h for h in await store.recent_event_heads(utc_now() - timedelta(minutes=1))}
        assert heads[eid].last_seq == 1 and heads[eid].isolation == "shared"
        assert eid not in {h.execution_id for h in await store.recent_event_heads(utc_now() + timedelta(minutes=1))}
        assert await store.delivery_cursors("hook", [eid]) == {}
        retry_at = utc_now() + timedelta(seconds=5)
        await store.delivery_failed("hook", eid, error="HTTP 503", retry_at=retry_at)
        await store.delivery_failed("hook", eid, error="HTTP 502", retry_at=retry_at)
        cursor = (await store.delivery_cursors("hook", [eid]))[eid]
        assert (cursor.delivered_seq, cursor.attempts, cursor.last_error) == (0, 2, "HTTP 502")
        assert abs((cursor.next_attempt_at - retry_at).total_seconds()) < 0.01
        await store.ack_delivery("hook", eid, 3)
        await store.ack_delivery("hook", eid, 2)  # late or duplicate ack: never moves back
        cursor = (await store.delivery_cursors("hook", [eid]))[eid]
        assert (cursor.delivered_seq, cursor.attempts, cursor.next_attempt_at, cursor.last_error) == (3, 0, None, None)
        assert await store.delivery_cursors("other", [eid]) == {}

    with_store(store_url, body)
