"""Integration tests of ``persistence``: SqlStore on SQLite and PostgreSQL, and MemoryStore.

No Ray. Tests that need a real database take ``database_url`` (SQLite file + the session's
PostgreSQL database); behavioural tests take ``store_url``, which adds ``memory://`` so the
in-process store is held to the same contract. Every execution id is a fresh uuid4, since
the PostgreSQL database is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from dsl.errors import ConfigurationError, ExecutionNotFoundError, FencedError, PackConflictError
from persistence import (
    TERMINAL_STATUSES,
    ExecutionRecord,
    MemoryStore,
    SqlStore,
    StepCheckpoint,
    Store,
    open_store,
)

from tests.conftest import with_store

ROOT = Path(__file__).resolve().parents[2]
PACK = {"id": "demo", "version": "1.0.0", "steps": [{"id": "a", "type": "task"}, {"id": "b", "type": "task"}]}
STATUS_KEYS = [
    "execution_id",
    "workflow_pack_id",
    "version",
    "status",
    "started_at",
    "completed_at",
    "current_step",
    "completed_steps",
    "outputs",
    "duration_ms",
    "error",
    "error_detail",
]
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def new_run(store: Store, *, status: str = "queued", pack_id: str = "demo") -> ExecutionRecord:
    return await store.create_execution(
        execution_id=str(uuid.uuid4()),
        workflow_pack_id=pack_id,
        version="1.0.0",
        pack_document=PACK,
        inputs={"n": 3},
        options={"timeout_s": 60},
        status=status,
    )


def checkpoint(execution_id: str, step_key: str = "a", *, attempt: int = 1, outputs: Any = None) -> StepCheckpoint:
    start = datetime.now(UTC)
    return StepCheckpoint(
        execution_id=execution_id,
        step_key=step_key,
        attempt=attempt,
        step_id=step_key.rsplit("/", 1)[-1].split("[")[0],
        step_type="task",
        status="completed",
        outputs=outputs,
        error=None,
        idempotency_key=f"{execution_id}:{step_key}:{attempt}",
        started_at=start,
        ended_at=start + timedelta(milliseconds=25),
    )


def assert_utc(value: datetime | None) -> None:
    assert isinstance(value, datetime)
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- schema / opening


def test_migration_creates_tables_and_reopening_is_a_no_op(database_url: str) -> None:
    async def body() -> None:
        store = await open_store(database_url)
        again = await open_store(database_url)  # second upgrade on a migrated database
        try:
            assert isinstance(store, SqlStore)
            async with store.engine.connect() as conn:
                tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
                indexes = {i["name"] for i in await conn.run_sync(lambda c: inspect(c).get_indexes("executions"))}
                fks = await conn.run_sync(lambda c: inspect(c).get_foreign_keys("step_checkpoints"))
                revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
                functions = (
                    set((await conn.execute(text("SELECT proname FROM pg_proc WHERE proname LIKE 'cortx%'"))).scalars())
                    if store.dialect == "postgresql" else set()
                )
            assert {"packs", "executions", "step_checkpoints", "execution_secrets", "alembic_version"} <= tables
            assert {"execution_events", "event_deliveries"} <= tables
            assert {
                "ix_executions_status_created_at",
                "ix_executions_workflow_pack_id_created_at",
                "ix_executions_created_at_execution_id",
            } <= indexes
            assert fks[0]["referred_table"] == "executions" and fks[0]["options"].get("ondelete") == "CASCADE"
            assert revision == "0005"
            # The hot writes are server-side functions on PostgreSQL (migration 0005).
            assert functions == ({"cortx_write_checkpoint", "cortx_append_events", "cortx_admit"} if store.dialect == "postgresql" else set())
            run = await new_run(again)
            assert (await store.get_execution(run.execution_id)).execution_id == run.execution_id
        finally:
            await store.close()
            await again.close()

    asyncio.run(body())


def test_models_match_migrations(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from persistence.models import Base

    async def body(store: Store) -> list[Any]:
        assert isinstance(store, SqlStore)
        async with store.engine.connect() as conn:
            return await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))

    assert with_store(database_url, body) == []


def test_concurrent_migration_of_a_fresh_database(fresh_database_url: str) -> None:
    url = fresh_database_url

    async def body() -> list[int]:
        stores = await asyncio.gather(*(open_store(url) for _ in range(3)))
        try:
            run = await new_run(stores[0], status="running")
            claims = await asyncio.gather(*(s.claim_execution(run.execution_id) for s in stores))
            return sorted(c.owner_epoch for c in claims)
        finally:
            for s in stores:
                await s.close()

    # three engines migrating one fresh database at once, then claiming one run at once
    assert asyncio.run(body()) == [1, 2, 3]


_MIGRATE_IN_CHILD = """
import asyncio, sys, time
from persistence import open_store

async def main(url, start):
    time.sleep(max(0.0, start - time.time()))  # all children start migrating together
    store = await open_store(url)
    await store.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
print("ok")
"""


def test_processes_migrating_a_fresh_database_at_once(fresh_database_url: str) -> None:
    url = fresh_database_url
    start = str(time.time() + 3)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_IN_CHILD, url, start],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [c.communicate(timeout=60) for c in children]
    assert [c.returncode for c in children] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["ok"] * 3

    async def body(store: Store) -> str:
        return (await new_run(store)).status

    assert with_store(url, body) == "queued"


def test_sqlite_pragmas_folder_and_plain_url(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "cortx.db"

    async def body(store: Store) -> tuple[Any, ...]:
        assert isinstance(store, SqlStore)
        assert store.engine.url.drivername == "sqlite+aiosqlite"
        async with store.engine.connect() as conn:
            pragmas = ("journal_mode", "foreign_keys", "busy_timeout")
            return tuple([await conn.scalar(text(f"PRAGMA {p}")) for p in pragmas])

    assert with_store(f"sqlite:///{path}", body) == ("wal", 1, 10000)
    assert path.exists()


def test_plain_postgresql_url_is_rewritten(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def body(store: Store) -> str:
        assert isinstance(store, SqlStore)
        return (await new_run(store)).status

    assert with_store(plain, body) == "queued"


def test_open_without_migrating_refuses_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(ConfigurationError, match="schema is at revision None"):
        asyncio.run(open_store(url, migrate=False))
    asyncio.run(_open_close(url))  # migrate
    asyncio.run(_open_close(url, migrate=False))  # now accepted


async def _open_close(url: str, **kwargs: Any) -> None:
    store = await open_store(url, **kwargs)
    await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mysql://root:hunter2@db/cortx",
        "postgresql+psycopg://u@h/db",
        "sqlite+aiosqlite:///:memory:",
        "memory",
        "nonsense",
    ],
)
def test_bad_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        asyncio.run(open_store(url))
    assert info.value.name == "DATABASE_URL"
    assert "hunter2" not in str(info.value)


def test_unreachable_postgres_is_a_configuration_error_quickly() -> None:
    url = "postgresql+asyncpg://cortx:s3cret@127.0.0.1:1/cortx"
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        asyncio.run(open_store(url))
    assert time.monotonic() - started < 5
    assert info.value.name == "DATABASE_URL"
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert "cannot connect" in info.value.rule


def test_importing_persistence_does_not_import_ray() -> None:
    code = (
        "import sys, persistence; "
        "print([m for m in sys.modules if m.split('.')[0] in {'ray', 'actors', 'serve_app'}])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- packs


def test_save_pack_is_idempotent_and_conflicts_on_a_different_body(store_url: str) -> None:
    pack_id = f"pack-{uuid.uuid4().hex[:8]}"

    async def body(store: Store) -> None:
        first = await store.save_pack(pack_id, "1.0.0", {"b": [1, 2], "a": {"y": 1, "x": 2}}, "a: ...")
        # same canonical JSON (keys in another order), other source text: the existing record comes back
        again = await store.save_pack(pack_id, "1.0.0", {"a": {"x": 2, "y": 1}, "b": [1, 2]}, "different text")
        assert again.created_at == first.created_at and again.source_text == "a: ..."
        assert again.content_hash == first.content_hash and len(first.content_hash) == 64
        with pytest.raises(PackConflictError) as info:
            await store.save_pack(pack_id, "1.0.0", {"a": {"x": 2, "y": 1}, "b": [2, 1]})
        assert (info.value.pack_id, info.value.version) == (pack_id, "1.0.0")
        await store.save_pack(pack_id, "1.1.0", {"a": 1})
        got = await store.get_pack(pack_id, "1.0.0")
        assert got is not None and got.document == {"a": {"x": 2, "y": 1}, "b": [1, 2]} and got.deprecated is False
        assert_utc(got.created_at)
        assert await store.get_pack(pack_id, "9.9.9") is None
        mine = [(p.pack_id, p.version) for p in await store.list_packs() if p.pack_id == pack_id]
        assert mine == [(pack_id, "1.0.0"), (pack_id, "1.1.0")]

    with_store(store_url, body)


# --------------------------------------------------------------------------- executions


def test_create_and_claim_bump_the_epoch(store_url: str) -> None:
    async def body(store: Store) -> None:
        queued = await new_run(store)
        assert (queued.status, queued.owner_epoch, queued.started_at, queued.completed_steps) == ("queued", 0, None, [])
        assert queued.pack_document == PACK and queued.inputs == {"n": 3} and queued.isolation == "shared"
        unadmitted = await store.claim_execution(queued.execution_id)  # a queued run waits for admission
        assert (unadmitted.status, unadmitted.owner_epoch, unadmitted.started_at) == ("queued", 0, None)
        # (other tests' runs share this database: a limit no test reaches)
        assert queued.execution_id in [r.execution_id for r in await store.admit_queued(10**9)]
        first = await store.claim_execution(queued.execution_id)
        assert (first.status, first.owner_epoch) == ("running", 1)
        assert_utc(first.started_at)
        second = await store.claim_execution(queued.execution_id.upper())  # ids are case-insensitive
        assert second.owner_epoch == 2 and second.started_at == first.started_at
        running = await new_run(store, status="running")
        assert running.status == "running" and running.started_at is not None and running.owner_epoch == 0
        with pytest.raises(ValueError, match="already exists"):
            await store.create_execution(
                execution_id=running.execution_id, workflow_pack_id="demo", version="1", pack_document={},
                inputs={}, options={},
            )
        with pytest.raises(ValueError):
            await store.create_execution(
                execution_id="nope", workflow_pack_id="demo", version="1", pack_document={}, inputs={}, options={}
            )
        with pytest.raises(ValueError):
            await new_run(store, status="completed")

    with_store(store_url, body)


def test_secret_inputs_are_stored_apart_and_erased(store_url: str) -> None:
    """The secret store: values written with the run, read by its owner, erased at the end;
    the executions row never holds them (docs/security.md)."""

    async def body(store: Store) -> None:
        secret = {"card": "ctok-store-5150", "pin": 4321}
        run = await store.create_execution(
            execution_id=str(uuid.uuid4()), workflow_pack_id="demo", version="1.0.0", pack_document=PACK,
            inputs={"n": 3, "card": "***", "pin": "***"}, options={}, secret_inputs=secret,
        )
        other = await new_run(store)
        assert await store.load_secret_inputs(run.execution_id) == secret
        assert await store.load_secret_inputs(other.execution_id) == {}
        assert await store.load_secret_inputs("not-a-uuid") == {}
        stored = await store.get_execution(run.execution_id)
        assert "ctok-store-5150" not in json.dumps(stored.to_status_dict()) and stored.inputs["card"] == "***"
        await store.delete_secret_inputs(run.execution_id)
        assert await store.load_secret_inputs(run.execution_id) == {}

    with_store(store_url, body)


def test_write_checkpoint_first_write_wins(store_url: str) -> None:
    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        cp = checkpoint(run.execution_id, "process-items[3]/validate-item", outputs={"ok": True})
        inserted = await store.write_checkpoint(
            cp, owner_epoch=run.owner_epoch, current_step="b", completed_step=cp.step_key, context={"steps": {"a": 1}}
        )
        duplicate = dataclass_replace(cp, outputs={"ok": False})
        again = await store.write_checkpoint(duplicate, owner_epoch=run.owner_epoch, completed_step=cp.step_key)
        assert (inserted, again) == (True, False)
        after = await store.get_execution(run.execution_id)
        assert after.completed_steps == [cp.step_key]
        assert after.current_step == "b" and after.context == {"steps": {"a": 1}}
        assert after.updated_at >= run.updated_at
        stored = await store.load_checkpoints(run.execution_id)
        assert [(c.step_key, c.attempt, c.outputs) for c in stored] == [(cp.step_key, 1, {"ok": True})]
        # a new attempt of the same step is a new row; its key is not listed twice
        retry = dataclass_replace(
            checkpoint(run.execution_id, cp.step_key, attempt=2, outputs=[1, "two", None]), node_id="ab12" * 14
        )
        assert await store.write_checkpoint(retry, owner_epoch=run.owner_epoch, completed_step=cp.step_key)
        assert (await store.get_execution(run.execution_id)).completed_steps == [cp.step_key]
        stored = await store.load_checkpoints(run.execution_id)
        assert [(c.attempt, c.node_id) for c in stored] == [(1, None), (2, "ab12" * 14)]
        assert stored[1].to_dict()["node_id"] == "ab12" * 14

    with_store(store_url, body)


def dataclass_replace(cp: StepCheckpoint, **changes: Any) -> StepCheckpoint:
    import dataclasses

    return dataclasses.replace(cp, **changes)


def test_concurrent_writes_of_one_checkpoint_insert_once(store_url: str) -> None:
    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        cp = checkpoint(run.execution_id, "a")
        results = await asyncio.gather(
            *(store.write_checkpoint(cp, owner_epoch=run.owner_epoch, completed_step="a") for _ in range(6))
        )
        assert sorted(results) == [False] * 5 + [True]
        assert (await store.get_execution(run.execution_id)).completed_steps == ["a"]
        assert len(await store.load_checkpoints(run.execution_id)) == 1

    with_store(store_url, body)


def test_completed_steps_keep_completion_order(store_url: str) -> None:
    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        keys = ["b", "a", "loop[0]/x", "loop[1]/x", "c"]
        for key in keys:
            assert await store.write_checkpoint(checkpoint(run.execution_id, key), owner_epoch=1, completed_step=key)
        assert (await store.get_execution(run.execution_id)).completed_steps == keys

    with_store(store_url, body)


def test_stale_epoch_is_fenced_and_writes_nothing(store_url: str) -> None:
    async def body(store: Store) -> None:
        eid = (await new_run(store, status="running")).execution_id
        old = await store.claim_execution(eid)
        await store.write_checkpoint(
            checkpoint(eid, "a"), owner_epoch=old.owner_epoch, completed_step="a", context={"v": 1}
        )
        new = await store.claim_execution(eid)  # another owner takes over
        assert new.owner_epoch == old.owner_epoch + 1
        before = await store.get_execution(eid)
        with pytest.raises(FencedError) as info:
            await store.write_checkpoint(
                checkpoint(eid, "b"),
                owner_epoch=old.owner_epoch,
                current_step="b",
                completed_step="b",
                context={"v": 2},
            )
        assert (info.value.execution_id, info.value.owner_epoch) == (eid, old.owner_epoch)
        with pytest.raises(FencedError):
            await store.set_current_step(eid, owner_epoch=old.owner_epoch, step_key="zzz")
        with pytest.raises(FencedError):
            await store.finish_execution(eid, owner_epoch=old.owner_epoch, status="failed", error="stale")
        after = await store.get_execution(eid)
        assert (after.completed_steps, after.context, after.current_step) == (["a"], {"v": 1}, None)
        assert after.status == "running"
        assert after.updated_at == before.updated_at
        assert [c.step_key for c in await store.load_checkpoints(eid)] == ["a"]
        # the new owner carries on
        assert await store.write_checkpoint(checkpoint(eid, "b"), owner_epoch=new.owner_epoch, completed_step="b")
        await store.set_current_step(eid, owner_epoch=new.owner_epoch, step_key="c")
        assert (await store.get_execution(eid)).current_step == "c"

    with_store(store_url, body)


def test_finish_is_terminal_and_a_second_finish_is_a_no_op(store_url: str) -> None:
    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        done = await store.finish_execution(
            run.execution_id, owner_epoch=run.owner_epoch, status="completed", outputs={"total": 6}
        )
        assert (done.status, done.outputs, done.error) == ("completed", {"total": 6}, None)
        assert_utc(done.completed_at)
        again = await store.finish_execution(run.execution_id, owner_epoch=99, status="failed", error="late")
        assert again == done
        with pytest.raises(FencedError):
            await store.write_checkpoint(
                checkpoint(run.execution_id, "x"), owner_epoch=run.owner_epoch, completed_step="x"
            )
        with pytest.raises(FencedError):
            await store.set_current_step(run.execution_id, owner_epoch=run.owner_epoch, step_key="x")
        claimed = await store.claim_execution(run.execution_id)
        assert claimed == done and claimed.owner_epoch == run.owner_epoch  # terminal: no bump
        assert await store.load_checkpoints(run.execution_id) == []
        failed_run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        detail = {"step": "a", "kind": "timeout", "message": "step a timed out", "attempts": 3}
        failed = await store.finish_execution(
            failed_run.execution_id, owner_epoch=1, status="failed", error="step a timed out", error_detail=detail
        )
        assert (failed.status, failed.error, failed.error_detail) == ("failed", "step a timed out", detail)
        assert failed.outputs is None
        queued = await new_run(store)  # cancelling a run nobody claimed: epoch 0
        cancelled = await store.finish_execution(queued.execution_id, owner_epoch=0, status="cancelled")
        assert cancelled.status in TERMINAL_STATUSES and cancelled.duration_ms is None
        with pytest.raises(ValueError):
            await store.finish_execution(queued.execution_id, owner_epoch=0, status="running")

    with_store(store_url, body)


@pytest.mark.parametrize("bad_id", [str(uuid.uuid4()), "not-a-uuid", "' OR 1=1 --", "x" * 300, ""])
def test_unknown_and_malformed_ids_are_not_found(store_url: str, bad_id: str) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(ExecutionNotFoundError) as info:
            await store.get_execution(bad_id)
        assert info.value.execution_id == bad_id
        with pytest.raises(ExecutionNotFoundError):
            await store.claim_execution(bad_id)
        with pytest.raises(ExecutionNotFoundError):
            await store.write_checkpoint(checkpoint(bad_id, "a"), owner_epoch=1)
        with pytest.raises(ExecutionNotFoundError):
            await store.set_current_step(bad_id, owner_epoch=1, step_key="a")
        with pytest.raises(ExecutionNotFoundError):
            await store.finish_execution(bad_id, owner_epoch=1, status="completed")
        assert await store.load_checkpoints(bad_id) == []

    with_store(store_url, body)


def test_datetimes_are_aware_utc(store_url: str) -> None:
    plus_two = timezone(timedelta(hours=2))

    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        start = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=plus_two)
        cp = dataclass_replace(checkpoint(run.execution_id), started_at=start, ended_at=start + timedelta(seconds=1.5))
        await store.write_checkpoint(cp, owner_epoch=1)
        done = await store.finish_execution(run.execution_id, owner_epoch=1, status="completed")
        for value in (done.created_at, done.started_at, done.completed_at, done.updated_at):
            assert_utc(value)
        assert done.created_at <= done.started_at <= done.completed_at  # type: ignore[operator]
        [stored] = await store.load_checkpoints(run.execution_id)
        assert_utc(stored.started_at)
        assert stored.started_at == start and stored.started_at.hour == 12  # same instant, shown in UTC
        assert stored.duration_ms == 1500
        with pytest.raises(ValueError, match="timezone-aware"):
            naive = dataclass_replace(cp, step_key="n", started_at=start.replace(tzinfo=None))
            await store.write_checkpoint(naive, owner_epoch=1)

    with_store(store_url, body)


def test_to_status_dict_shape(store_url: str) -> None:
    async def body(store: Store) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        queued = await new_run(store)
        await store.admit_queued(10**9)  # (other tests' runs share this database)
        run = await store.claim_execution(queued.execution_id)
        cp = checkpoint(run.execution_id, "a", outputs={"v": 1})
        await store.write_checkpoint(cp, owner_epoch=1, completed_step="a")
        running = (await store.get_execution(run.execution_id)).to_status_dict()
        done = await store.finish_execution(run.execution_id, owner_epoch=1, status="completed", outputs={"r": 2})
        [stored] = await store.load_checkpoints(run.execution_id)
        return queued.to_status_dict(), running, done.to_status_dict() | {"_cp": stored.to_dict()}

    queued, running, done = with_store(store_url, body)
    cp = done.pop("_cp")
    for status in (queued, running, done):
        assert list(status) == STATUS_KEYS
        json.dumps(status)  # JSON-ready
    assert (queued["status"], queued["started_at"], queued["duration_ms"]) == ("queued", None, None)
    assert running["completed_at"] is None and isinstance(running["duration_ms"], int) and running["duration_ms"] >= 0
    assert ISO_Z.match(done["started_at"]) and ISO_Z.match(done["completed_at"])
    assert (done["status"], done["outputs"], done["completed_steps"]) == ("completed", {"r": 2}, ["a"])
    assert isinstance(done["duration_ms"], int)
    assert cp["duration_ms"] == 25 and ISO_Z.match(cp["ended_at"]) and cp["outputs"] == {"v": 1}
    json.dumps(cp)


def test_list_executions_newest_first_with_filters(store_url: str) -> None:
    pack_id = f"list-{uuid.uuid4().hex[:8]}"

    async def body(store: Store) -> None:
        made = []
        for index in range(4):
            status = "running" if index == 1 else "queued"
            made.append((await new_run(store, pack_id=pack_id, status=status)).execution_id)
            await asyncio.sleep(0.002)
        await store.claim_execution(made[1])
        await store.finish_execution(made[2], owner_epoch=0, status="cancelled")
        listed = await store.list_executions(limit=10_000)
        everything = [r.execution_id for r in listed if r.workflow_pack_id == pack_id]
        assert everything == made[::-1]
        queued = [r.execution_id for r in await store.list_executions(statuses={"queued"}, limit=10_000)]
        assert [e for e in queued if e in made] == [made[3], made[0]]
        active = await store.list_executions(statuses=["running", "cancelled"], limit=10_000)
        assert {r.execution_id for r in active if r.workflow_pack_id == pack_id} == {made[1], made[2]}
        assert len(await store.list_executions(limit=2)) == 2
        assert await store.list_executions(statuses=[]) == []
        with pytest.raises(ValueError):
            await store.list_executions(limit=0)

    with_store(store_url, body)


def test_bad_arguments_are_refused_alike(store_url: str) -> None:
    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        with pytest.raises(ValueError, match="at most 512"):
            await store.write_checkpoint(checkpoint(run.execution_id, "k" * 513), owner_epoch=1)
        with pytest.raises(ValueError, match="status"):
            await store.write_checkpoint(dataclass_replace(checkpoint(run.execution_id), status="done"), owner_epoch=1)
        with pytest.raises(ValueError, match="at most 200"):
            await store.save_pack("p" * 201, "1", {})
        with pytest.raises(TypeError):
            await store.save_pack("p", "1", {"bad": object()})
        with pytest.raises(TypeError):
            await store.create_execution(
                execution_id=str(uuid.uuid4()), workflow_pack_id="p", version="1", pack_document={},
                inputs={"bad": object()}, options={},
            )
        with pytest.raises(ValueError):  # NaN is not JSON; PostgreSQL's JSONB refuses it too
            await store.write_checkpoint(checkpoint(run.execution_id, outputs={"x": float("nan")}), owner_epoch=1)
        with pytest.raises(TypeError):
            await store.finish_execution(run.execution_id, owner_epoch=1, status="completed", outputs={"s": {1, 2}})
        assert (await store.get_execution(run.execution_id)).status == "running"
        assert await store.load_checkpoints(run.execution_id) == []

    with_store(store_url, body)


# --------------------------------------------------------------------------- backend specifics


def test_deleting_an_execution_cascades_to_checkpoints(database_url: str) -> None:
    async def body(store: Store) -> int:
        assert isinstance(store, SqlStore)
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        await store.write_checkpoint(checkpoint(run.execution_id), owner_epoch=1)
        async with store.engine.begin() as conn:
            await conn.execute(text("DELETE FROM executions WHERE execution_id = :id"), {"id": run.execution_id})
        with pytest.raises(ExecutionNotFoundError):
            await store.write_checkpoint(checkpoint(run.execution_id, "b"), owner_epoch=1)
        return len(await store.load_checkpoints(run.execution_id))

    assert with_store(database_url, body) == 0


def test_sqlite_stores_in_two_engines_share_the_file_and_fence(sqlite_url: str) -> None:
    async def body() -> None:
        a, b = await open_store(sqlite_url), await open_store(sqlite_url)
        try:
            run = await a.claim_execution((await new_run(a, status="running")).execution_id)
            taken = await b.claim_execution(run.execution_id)
            assert taken.owner_epoch == 2
            writes = await asyncio.gather(
                a.write_checkpoint(checkpoint(run.execution_id, "a"), owner_epoch=1),
                b.write_checkpoint(checkpoint(run.execution_id, "a"), owner_epoch=2, completed_step="a"),
                return_exceptions=True,
            )
            assert isinstance(writes[0], FencedError) and writes[1] is True
            assert (await a.get_execution(run.execution_id)).completed_steps == ["a"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_memory_store_keeps_nothing_between_instances() -> None:
    async def body() -> None:
        first = await open_store("memory://")
        assert isinstance(first, MemoryStore) and isinstance(first, Store)
        run = await new_run(first)
        returned = await first.get_execution(run.execution_id)
        returned.inputs["n"] = 999  # callers cannot mutate stored state
        assert (await first.get_execution(run.execution_id)).inputs == {"n": 3}
        second = await open_store("memory://")
        with pytest.raises(ExecutionNotFoundError):
            await second.get_execution(run.execution_id)
        await first.close()
        with pytest.raises(RuntimeError):
            await first.get_execution(run.execution_id)

    asyncio.run(body())


def test_str_enum_statuses_are_stored_as_plain_strings(store_url: str) -> None:
    from enum import Enum

    class Status(str, Enum):  # e.g. dsl.state.ExecutionStatus
        QUEUED = "queued"
        COMPLETED = "completed"

    async def body(store: Store) -> None:
        run = await new_run(store, status=Status.QUEUED)  # type: ignore[arg-type]
        assert type(run.status) is str and run.status == "queued"
        cp = dataclass_replace(checkpoint(run.execution_id), status=Status.COMPLETED)
        assert await store.write_checkpoint(cp, owner_epoch=0)
        [stored] = await store.load_checkpoints(run.execution_id)
        assert type(stored.status) is str and stored.status == "completed"
        done = await store.finish_execution(
            run.execution_id, owner_epoch=0, status=Status.COMPLETED  # type: ignore[arg-type]
        )
        assert type(done.status) is str and done.status == "completed"
        listed = await store.list_executions(statuses=[Status.COMPLETED], limit=10_000)  # type: ignore[list-item]
        assert run.execution_id in {r.execution_id for r in listed}
        by_string = await store.list_executions(statuses="completed", limit=10_000)
        assert run.execution_id in {r.execution_id for r in by_string}

    with_store(store_url, body)


def test_nul_and_lone_surrogates_are_stored_as_replacement_characters(store_url: str) -> None:
    """An upstream's error body or a task's exception may hold NUL or a lone surrogate, which
    PostgreSQL refuses in JSONB and TEXT; the checkpoint and the final record must still be
    written (else the run fails for the wrong reason)."""

    async def body(store: Store) -> None:
        run = await store.claim_execution((await new_run(store, status="running")).execution_id)
        bad = "nul\x00 and \ud800 here"
        cp = dataclass_replace(
            checkpoint(run.execution_id, "a", outputs={"body": bad, bad: [bad]}),
            status="failed", error={"kind": "http_status", "message": bad, "body_excerpt": bad},
        )
        assert await store.write_checkpoint(cp, owner_epoch=run.owner_epoch)
        done = await store.finish_execution(
            run.execution_id, owner_epoch=run.owner_epoch, status="failed", error=bad, error_detail={"message": bad}
        )
        [stored] = await store.load_checkpoints(run.execution_id)
        clean = "nul\ufffd and \ufffd here"
        if store_url != "memory://":  # the memory store keeps Python strings as they are
            assert stored.error == {"kind": "http_status", "message": clean, "body_excerpt": clean}
            assert stored.outputs == {"body": clean, clean: [clean]}
            assert (done.error, done.error_detail) == (clean, {"message": clean})
        # an emoji (a surrogate pair once escaped) and the text "\\u0000" are kept as they are
        keep = "ok \U0001F600 and \\u0000 literally"
        again = dataclass_replace(checkpoint(run.execution_id, "b", outputs=keep))
        other = await store.claim_execution((await new_run(store, status="running")).execution_id)
        await store.write_checkpoint(dataclass_replace(again, execution_id=other.execution_id), owner_epoch=other.owner_epoch)
        assert [c.outputs for c in await store.load_checkpoints(other.execution_id)] == [keep]

    with_store(store_url, body)


@pytest.mark.postgres
def test_a_pooled_connection_cut_while_idle_is_replaced_before_use(postgres_url: str) -> None:
    """The pool pings a connection idle for PING_AFTER_IDLE_S or more, and replaces it when the server ended it."""
    from persistence.engine import PING_AFTER_IDLE_S

    async def body() -> None:
        store = await open_store(postgres_url)
        try:
            assert isinstance(store, SqlStore)
            async with store.engine.connect() as conn:
                first_pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            # The server ends that session (a restart, an idle timeout, a firewall) while it sits in the pool.
            killer = await open_store(postgres_url)  # its own pool
            try:
                async with killer.engine.connect() as other:
                    assert await other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
            finally:
                await killer.close()
            await asyncio.sleep(PING_AFTER_IDLE_S + 0.2)
            run = await new_run(store)  # a write: needs a working connection at once
            async with store.engine.connect() as conn:
                pids = {await conn.scalar(text("SELECT pg_backend_pid()"))}
            assert first_pid not in pids
            assert (await store.get_execution(run.execution_id)).execution_id == run.execution_id
        finally:
            await store.close()

    asyncio.run(body())
