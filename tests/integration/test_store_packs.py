"""Pack-version methods added for the HTTP API: ``list_pack_versions`` and ``deprecate_pack``.

Run against SqlStore on SQLite and PostgreSQL and against MemoryStore (the same contract).
Pack ids carry a random suffix, since the PostgreSQL database is shared by the session.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dsl.errors import PackConflictError
from persistence import PackRecord, Store
from tests.conftest import with_store



def pack(pack_id: str, version: str, name: str = "Demo") -> dict[str, Any]:
    return {"id": pack_id, "name": name, "version": version, "steps": [{"id": "a", "type": "task"}]}


@pytest.mark.timeout(60)
def test_list_pack_versions_returns_only_that_pack_in_creation_order(store_url: str) -> None:
    pid, other = f"p-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"

    async def body(store: Store) -> list[PackRecord]:
        for version in ("2.0.0", "1.0.0", "10.0.0"):
            await store.save_pack(pid, version, pack(pid, version))
        await store.save_pack(other, "1.0.0", pack(other, "1.0.0"))
        assert await store.list_pack_versions(f"none-{uuid.uuid4().hex}") == []
        return await store.list_pack_versions(pid)

    versions = with_store(store_url, body)
    assert [p.version for p in versions] == ["2.0.0", "1.0.0", "10.0.0"]
    assert {p.pack_id for p in versions} == {pid}
    assert all(p.deprecated is False for p in versions)
    assert [p.created_at for p in versions] == sorted(p.created_at for p in versions)


@pytest.mark.timeout(60)
def test_deprecate_pack_sets_only_the_flag_idempotently_and_can_undo_it(store_url: str) -> None:
    pid = f"p-{uuid.uuid4().hex[:8]}"
    doc = pack(pid, "1.0.0")

    async def body(store: Store) -> None:
        saved = await store.save_pack(pid, "1.0.0", doc, "source text")
        await store.save_pack(pid, "1.1.0", pack(pid, "1.1.0"))
        first = await store.deprecate_pack(pid, "1.0.0")
        again = await store.deprecate_pack(pid, "1.0.0")
        assert first is not None and again is not None
        assert first.deprecated is True and again.deprecated is True
        # Only the flag changed: same document, hash, source and creation time.
        assert first.document == doc and first.content_hash == saved.content_hash
        assert first.source_text == "source text" and first.created_at == saved.created_at
        stored = await store.get_pack(pid, "1.0.0")
        assert stored is not None and stored.deprecated is True
        untouched = await store.get_pack(pid, "1.1.0")
        assert untouched is not None and untouched.deprecated is False
        # Saving the same body again keeps the flag; a different body is still a conflict.
        resaved = await store.save_pack(pid, "1.0.0", doc)
        assert resaved.deprecated is True
        with pytest.raises(PackConflictError):
            await store.save_pack(pid, "1.0.0", pack(pid, "1.0.0", name="Other"))
        restored = await store.deprecate_pack(pid, "1.0.0", deprecated=False)
        assert restored is not None and restored.deprecated is False
        listed = {p.version: p.deprecated for p in await store.list_pack_versions(pid)}
        assert listed == {"1.0.0": False, "1.1.0": False}

    with_store(store_url, body)


@pytest.mark.timeout(60)
def test_deprecate_unknown_pack_version_returns_none_and_creates_nothing(store_url: str) -> None:
    pid = f"p-{uuid.uuid4().hex[:8]}"

    async def body(store: Store) -> None:
        await store.save_pack(pid, "1.0.0", pack(pid, "1.0.0"))
        assert await store.deprecate_pack(pid, "9.9.9") is None
        assert await store.deprecate_pack(f"none-{uuid.uuid4().hex}", "1.0.0") is None
        assert [p.version for p in await store.list_pack_versions(pid)] == ["1.0.0"]

    with_store(store_url, body)
