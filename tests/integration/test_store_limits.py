"""Values at and past what the schema holds: every store (SQLite, PostgreSQL, memory) answers alike.

No Ray. The PostgreSQL store writes its hot paths through server-side functions
(migration 0005), so these check that a value the functions' parameters or the columns
cannot hold is refused before anything is written, with the same error on every store.
"""

from __future__ import annotations

import pytest

from dsl.errors import ExecutionNotFoundError, FencedError
from persistence.engine import json_dumps
from persistence.outbox import NewEvent
from persistence.validation import MAX_INT32
from tests.conftest import with_store
from tests.integration.test_store import checkpoint, new_run

UNSTORABLE_KEYS = ["a\x00b", "a\ud800b", "\udc00"]


@pytest.mark.parametrize("key", UNSTORABLE_KEYS, ids=["nul", "high-surrogate", "low-surrogate"])
def test_a_key_no_database_can_hold_is_refused_everywhere_and_nothing_is_written(store_url: str, key: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        epoch = (await store.claim_execution(run.execution_id)).owner_epoch
        before = await store.get_execution(run.execution_id)
        with pytest.raises(ValueError, match="step_key holds U\\+"):
            await store.write_checkpoint(checkpoint(run.execution_id, key), owner_epoch=epoch)
        with pytest.raises(ValueError, match=r"events\[0\]\.step_key holds U\+"):
            await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=epoch,
                                         events=[NewEvent("step.completed", key, 1)])
        with pytest.raises(ValueError, match="completed_step holds U\\+"):
            await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=epoch, completed_step=key)
        with pytest.raises(ValueError, match="step_key holds U\\+"):
            await store.set_current_step(run.execution_id, owner_epoch=epoch, step_key=key)
        with pytest.raises(ValueError, match=r"events\[1\]\.step_key holds U\+"):
            await store.append_events(run.execution_id, owner_epoch=epoch,
                                      events=[NewEvent("x.y", "fine", 1), NewEvent("x.y", key, 1)])
        assert await store.load_checkpoints(run.execution_id) == []
        assert [e.type for e in await store.load_events(run.execution_id)] == ["execution.started"]
        after = await store.get_execution(run.execution_id)
        assert (after.current_step, after.completed_steps, after.updated_at) == (
            before.current_step, before.completed_steps, before.updated_at)

    with_store(store_url, body)


def test_integers_past_the_schema_are_refused_or_fenced_alike(store_url: str) -> None:
    async def body(store) -> None:
        run = await new_run(store, status="running")
        epoch = (await store.claim_execution(run.execution_id)).owner_epoch
        with pytest.raises(ValueError, match="checkpoint attempt must be an int from 1 to"):
            await store.write_checkpoint(checkpoint(run.execution_id, attempt=MAX_INT32 + 1), owner_epoch=epoch)
        with pytest.raises(ValueError, match=r"events\[0\]\.attempt must be an int from 1 to"):
            await store.append_events(run.execution_id, owner_epoch=epoch, events=[NewEvent("x.y", "a", MAX_INT32 + 1)])
        # An epoch no claim ever gave is a stale owner, whatever its size.
        for stale in (epoch + 1, 2**31, 2**40):
            with pytest.raises(FencedError):
                await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=stale)
            with pytest.raises(FencedError):
                await store.set_current_step(run.execution_id, owner_epoch=stale, step_key="a")
        assert await store.write_checkpoint(checkpoint(run.execution_id, attempt=MAX_INT32), owner_epoch=epoch)

    with_store(store_url, body)


def test_an_admission_limit_past_32_bits_admits_like_any_other(fresh_database_url: str) -> None:
    """The admission limit is any int >= 1 (FDD §9.2's setting is capped far lower)."""

    async def body(store) -> None:
        queued = await new_run(store, status="queued")
        assert [r.execution_id for r in await store.admit_queued(2**40)] == [queued.execution_id]

    for url in (fresh_database_url, "memory://"):  # an empty database each, the memory store as reference
        with_store(url, body)


def test_event_times_never_go_backwards_in_seq_order(store_url: str) -> None:
    """Concurrent writers of one run: each event's created_at is at or after the one before it."""
    import asyncio

    async def body(store) -> None:
        run = await new_run(store, status="running")
        epoch = (await store.claim_execution(run.execution_id)).owner_epoch

        async def one(i: int) -> None:
            await store.write_checkpoint(checkpoint(run.execution_id, f"s{i}"), owner_epoch=epoch,
                                         events=[NewEvent("step.completed", f"s{i}", 1)])
            await store.set_current_step(run.execution_id, owner_epoch=epoch, step_key=f"s{i}",
                                         events=[NewEvent("x.y", f"s{i}", 1)])

        await asyncio.gather(*(one(i) for i in range(20)))
        events = await store.load_events(run.execution_id)
        assert [e.seq for e in events] == list(range(1, 42))
        assert all(b.created_at >= a.created_at for a, b in zip(events, events[1:], strict=False))

    with_store(store_url, body)


@pytest.mark.parametrize(("secrets", "message"), [
    ({"token": float("nan")}, "JSON"),
    ({"t" * 201: "x"}, "secret_inputs name is 201 characters long"),
    ({"a\x00b": "x"}, "secret_inputs name holds U\\+0000"),
], ids=["nan-value", "long-name", "nul-name"])
def test_a_secret_input_the_store_cannot_hold_stores_nothing(store_url: str, secrets: dict, message: str) -> None:
    import uuid

    async def body(store) -> None:
        eid = str(uuid.uuid4())
        with pytest.raises(ValueError, match=message):
            await store.create_execution(execution_id=eid, workflow_pack_id="demo", version="1.0.0",
                                         pack_document={"id": "demo"}, inputs={}, options={}, status="queued",
                                         secret_inputs=secrets)
        with pytest.raises(ExecutionNotFoundError):
            await store.get_execution(eid)

    with_store(store_url, body)


def test_checkpoint_values_with_characters_beyond_the_bmp_round_trip_at_depth(store_url: str) -> None:
    """An emoji is a valid surrogate pair in JSON text: it must not be cleaned (nor halve the depth allowed)."""

    async def body(store) -> None:
        run = await new_run(store, status="running")
        epoch = (await store.claim_execution(run.execution_id)).owner_epoch
        deep: object = "done 😀"
        for _ in range(700):
            deep = [deep]
        mixed = {"ok": "thumbs 👍", "lone": "x\ud800y", "nul": "a\x00b"}
        assert await store.write_checkpoint(checkpoint(run.execution_id, "deep", outputs=deep), owner_epoch=epoch)
        assert await store.write_checkpoint(checkpoint(run.execution_id, "mixed", outputs=mixed), owner_epoch=epoch)
        stored = {c.step_key: c.outputs for c in await store.load_checkpoints(run.execution_id)}
        leaf = stored["deep"]
        for _ in range(700):
            leaf = leaf[0]
        assert leaf == "done 😀"
        if store_url.startswith("memory"):
            assert stored["mixed"] == mixed  # the memory store keeps Python strings as they are
        else:  # what no database stores is replaced by U+FFFD, the emoji is kept
            assert stored["mixed"] == {"ok": "thumbs 👍", "lone": "x\ufffdy", "nul": "a\ufffdb"}

    with_store(store_url, body)


def test_json_dumps_cleans_only_unpaired_surrogates_and_nul() -> None:
    assert json_dumps({"a": "😀"}) == '{"a":"\\ud83d\\ude00"}'
    assert json_dumps({"a": "😀\ud800"}) == '{"a":"\\ud83d\\ude00\\ufffd"}'
    assert json_dumps({"a": "\udc00😀"}) == '{"a":"\\ufffd\\ud83d\\ude00"}'
    assert json_dumps(["\x00", "\\ud800"]) == '["\\ufffd","\\\\ud800"]'
