"""``MemoryStore``: the :class:`~persistence.store.Store` kept in process memory.

Used when persistence is switched off (``DATABASE_URL=memory://``). It implements the same
contract as :class:`~persistence.sql_store.SqlStore` — the same argument checks, the same
fencing, first-write-wins checkpoints, idempotent pack saves, the same errors and
orderings — and the same behavioural tests run against it.

What it gives up: **nothing survives the process**. A crash, a restart or a second
process sees none of the packs, executions or checkpoints, so there is no resume and no
takeover by another node; two ``MemoryStore`` objects never share data. It also does not
enforce SQL-level guarantees across processes (there are none to share).

Values are copied through JSON on the way in and on the way out, so callers can never
mutate stored state and non-JSON values are refused (``TypeError``) as the database would.
A ``threading.Lock`` makes each method atomic even when called from several threads.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from dsl.errors import ExecutionNotFoundError, FencedError, PackConflictError
from persistence.admission import MemoryAdmission
from persistence.outbox import DeliveryCursor, MemoryOutbox, NewEvent, StoredEvent, check_events, claim_event, finish_event
from persistence.records import (
    ACTIVE_STATUSES,
    FINISH_STATUSES,
    MAX_PACK_ID,
    MAX_STEP_KEY,
    STATUS_QUEUED,
    STATUS_RUNNING,
    ExecutionRecord,
    PackRecord,
    StepCheckpoint,
    as_utc,
    content_hash,
    utc_now,
)
from persistence.validation import (
    check_checkpoint,
    check_length,
    check_limit,
    check_new_execution,
    check_secret_inputs,
    check_new_pack,
    normalize_execution_id,
    plain_status,
    status_filter,
)

__all__ = ["MemoryStore"]


def _json_copy(value: Any) -> Any:
    """A deep copy made through JSON (refuses what a JSON column would refuse)."""
    if value is None:
        return None
    return json.loads(json.dumps(value, allow_nan=False))


def _copy_execution(record: ExecutionRecord, **changes: Any) -> ExecutionRecord:
    fields = {
        name: _json_copy(getattr(record, name))
        for name in ("inputs", "options", "context", "completed_steps", "outputs", "error_detail", "pack_document")
    }
    fields.update(changes)
    return dataclasses.replace(record, **fields)


def _copy_checkpoint(cp: StepCheckpoint) -> StepCheckpoint:
    return dataclasses.replace(cp, outputs=_json_copy(cp.outputs), error=_json_copy(cp.error))


def _copy_pack(pack: PackRecord) -> PackRecord:
    return dataclasses.replace(pack, document=_json_copy(pack.document))


class MemoryStore(MemoryAdmission, MemoryOutbox):
    """In-process store with the :class:`~persistence.store.Store` contract; nothing is durable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._packs: dict[tuple[str, str], PackRecord] = {}
        self._executions: dict[str, ExecutionRecord] = {}
        self._checkpoints: dict[str, dict[tuple[str, int], StepCheckpoint]] = {}
        self._secrets: dict[str, dict[str, Any]] = {}
        self._events: dict[str, list[StoredEvent]] = {}  # the outbox (persistence.outbox)
        self._deliveries: dict[tuple[str, str], DeliveryCursor] = {}
        self._closed = False

    async def close(self) -> None:
        """Mark the store closed; its data is dropped with the object. Idempotent."""
        self._closed = True

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

    # ------------------------------------------------------------------ packs

    async def save_pack(
        self, pack_id: str, version: str, document: dict, source_text: str | None = None
    ) -> PackRecord:
        """Store a pack version, idempotently. See :meth:`persistence.store.Store.save_pack`."""
        self._check_open()
        check_new_pack(pack_id, version, document, source_text)
        digest = content_hash(document)
        with self._lock:
            existing = self._packs.get((pack_id, version))
            if existing is None:
                existing = PackRecord(pack_id, version, _json_copy(document), source_text, False, utc_now())
                self._packs[(pack_id, version)] = existing
        if existing.content_hash != digest:
            raise PackConflictError(pack_id, version)
        return _copy_pack(existing)

    async def get_pack(self, pack_id: str, version: str) -> PackRecord | None:
        """The stored pack version, or ``None``."""
        self._check_open()
        with self._lock:
            pack = self._packs.get((pack_id, version))
        return None if pack is None else _copy_pack(pack)

    async def list_packs(self) -> list[PackRecord]:
        """Every stored pack version, by pack id then creation time."""
        self._check_open()
        with self._lock:
            packs = sorted(self._packs.values(), key=lambda p: (p.pack_id, p.created_at, p.version))
        return [_copy_pack(p) for p in packs]

    async def list_pack_versions(self, pack_id: str) -> list[PackRecord]:
        """Every version of one pack. See :meth:`persistence.store.Store.list_pack_versions`."""
        self._check_open()
        with self._lock:
            packs = sorted(
                (p for p in self._packs.values() if p.pack_id == pack_id), key=lambda p: (p.created_at, p.version)
            )
        return [_copy_pack(p) for p in packs]

    async def deprecate_pack(self, pack_id: str, version: str, *, deprecated: bool = True) -> PackRecord | None:
        """Set a version's ``deprecated`` flag. See :meth:`persistence.store.Store.deprecate_pack`."""
        self._check_open()
        with self._lock:
            pack = self._packs.get((pack_id, version))
            if pack is None:
                return None
            pack = self._packs[(pack_id, version)] = dataclasses.replace(pack, deprecated=bool(deprecated))
        return _copy_pack(pack)

    # ------------------------------------------------------------------ executions

    async def create_execution(
        self,
        *,
        execution_id: str,
        workflow_pack_id: str,
        version: str,
        pack_document: dict,
        inputs: dict,
        options: dict,
        isolation: str = "shared",
        status: str = "running",
        secret_inputs: dict | None = None,
    ) -> ExecutionRecord:
        """Insert a new execution. See :meth:`persistence.store.Store.create_execution`."""
        self._check_open()
        status, isolation = plain_status(status), plain_status(isolation)  # type: ignore[assignment]
        eid = check_new_execution(
            execution_id, workflow_pack_id, version, pack_document, inputs, options, isolation, status
        )
        check_secret_inputs(secret_inputs)
        now = utc_now()
        record = ExecutionRecord(
            execution_id=eid,
            workflow_pack_id=workflow_pack_id,
            version=version,
            status=status,
            inputs=_json_copy(inputs),
            options=_json_copy(options),
            context={},
            isolation=isolation,
            current_step=None,
            completed_steps=[],
            outputs=None,
            error=None,
            error_detail=None,
            owner_epoch=0,
            created_at=now,
            started_at=None if status == STATUS_QUEUED else now,
            completed_at=None,
            updated_at=now,
            pack_document=_json_copy(pack_document),
        )
        # Copied before anything is stored: a secret JSON cannot hold stores nothing (as the
        # SQL stores' one transaction does).
        secrets = _json_copy(dict(secret_inputs)) if secret_inputs else None
        with self._lock:
            if eid in self._executions:
                raise ValueError(f"execution {eid} already exists")
            self._executions[eid] = record
            if secrets:
                self._secrets[eid] = secrets
            self._checkpoints[eid] = {}
        return _copy_execution(record)

    def _get(self, execution_id: str) -> ExecutionRecord:
        """The stored record (caller holds the lock)."""
        eid = normalize_execution_id(execution_id)
        record = None if eid is None else self._executions.get(eid)
        if record is None:
            raise ExecutionNotFoundError(execution_id)
        return record

    def _fenced(self, execution_id: str, owner_epoch: int) -> ExecutionRecord:
        """The stored record if ``owner_epoch`` still owns it and it is active (caller holds the lock)."""
        record = self._get(execution_id)
        if record.owner_epoch != owner_epoch or record.status not in ACTIVE_STATUSES:
            raise FencedError(record.execution_id, owner_epoch)
        return record

    async def claim_execution(self, execution_id: str) -> ExecutionRecord:
        """Take ownership of a run. See :meth:`persistence.store.Store.claim_execution`."""
        self._check_open()
        with self._lock:
            record = self._get(execution_id)
            if record.status == STATUS_RUNNING:
                now = utc_now()
                record = dataclasses.replace(
                    record,
                    owner_epoch=record.owner_epoch + 1,
                    status=STATUS_RUNNING,
                    started_at=record.started_at or now,
                    updated_at=now,
                )
                self._executions[record.execution_id] = record
                self._append_events_locked(record.execution_id, [claim_event(record.owner_epoch)], now)
        return _copy_execution(record)

    async def write_checkpoint(
        self,
        checkpoint: StepCheckpoint,
        *,
        owner_epoch: int,
        current_step: str | None = None,
        completed_step: str | None = None,
        context: dict | None = None,
        events: Sequence[NewEvent] = (),
    ) -> bool:
        """Record one step attempt, fenced. See :meth:`persistence.store.Store.write_checkpoint`."""
        self._check_open()
        if normalize_execution_id(checkpoint.execution_id) is None:
            raise ExecutionNotFoundError(checkpoint.execution_id)
        checkpoint = check_checkpoint(checkpoint)
        check_length("current_step", current_step, MAX_STEP_KEY, required=False)
        check_length("completed_step", completed_step, MAX_STEP_KEY, required=False)
        if context is not None and not isinstance(context, dict):
            raise ValueError(f"context must be a dict or None, got {type(context).__name__}")
        stored = dataclasses.replace(
            checkpoint,
            execution_id=normalize_execution_id(checkpoint.execution_id),
            outputs=_json_copy(checkpoint.outputs),
            error=_json_copy(checkpoint.error),
            started_at=as_utc(checkpoint.started_at),
            ended_at=as_utc(checkpoint.ended_at),
        )
        new_context = _json_copy(context)
        new_events = check_events(events)
        with self._lock:
            record = self._fenced(checkpoint.execution_id, owner_epoch)
            rows = self._checkpoints[record.execution_id]
            key = (stored.step_key, stored.attempt)
            inserted = key not in rows
            if inserted:
                rows[key] = stored
            changes: dict[str, Any] = {"updated_at": utc_now()}
            if current_step is not None:
                changes["current_step"] = current_step
            if new_context is not None:
                changes["context"] = new_context
            if inserted and completed_step is not None and completed_step not in record.completed_steps:
                changes["completed_steps"] = [*record.completed_steps, completed_step]
            self._executions[record.execution_id] = dataclasses.replace(record, **changes)
            if inserted:
                self._append_events_locked(record.execution_id, new_events, changes["updated_at"])
        return inserted

    async def set_current_step(
        self, execution_id: str, *, owner_epoch: int, step_key: str, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record the step being worked on, fenced. See :meth:`persistence.store.Store.set_current_step`."""
        self._check_open()
        check_length("step_key", step_key, MAX_STEP_KEY)
        new_events = check_events(events)
        with self._lock:
            record = self._fenced(execution_id, owner_epoch)
            self._executions[record.execution_id] = dataclasses.replace(
                record, current_step=step_key, updated_at=utc_now()
            )
            self._append_events_locked(record.execution_id, new_events)

    async def finish_execution(
        self,
        execution_id: str,
        *,
        owner_epoch: int,
        status: str,
        outputs: dict | None = None,
        error: str | None = None,
        error_detail: dict | None = None,
    ) -> ExecutionRecord:
        """Move a run to a terminal status, fenced. See :meth:`persistence.store.Store.finish_execution`."""
        self._check_open()
        status = plain_status(status)  # type: ignore[assignment]
        if status not in FINISH_STATUSES:
            raise ValueError(f"finish status must be one of {sorted(FINISH_STATUSES)}, got {status!r}")
        new_outputs, new_detail = _json_copy(outputs), _json_copy(error_detail)
        with self._lock:
            record = self._get(execution_id)
            if record.status in FINISH_STATUSES:
                return _copy_execution(record)
            record = self._fenced(execution_id, owner_epoch)
            now = utc_now()
            record = dataclasses.replace(
                record,
                status=status,
                outputs=new_outputs,
                error=error,
                error_detail=new_detail,
                completed_at=now,
                updated_at=now,
            )
            self._executions[record.execution_id] = record
            self._append_events_locked(record.execution_id, check_events([finish_event(status, error, new_detail)]), now)
        return _copy_execution(record)

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """One execution. See :meth:`persistence.store.Store.get_execution`."""
        self._check_open()
        with self._lock:
            record = self._get(execution_id)
        return _copy_execution(record)

    async def load_checkpoints(self, execution_id: str) -> list[StepCheckpoint]:
        """Every checkpoint of a run. See :meth:`persistence.store.Store.load_checkpoints`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        with self._lock:
            rows = list(self._checkpoints.get(eid or "", {}).values())
        rows.sort(key=lambda c: (c.ended_at, c.step_key, c.attempt))
        return [_copy_checkpoint(c) for c in rows]

    async def load_secret_inputs(self, execution_id: str) -> dict:
        """A run's secret inputs. See :meth:`persistence.store.Store.load_secret_inputs`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        with self._lock:
            return _json_copy(self._secrets.get(eid or "", {}))

    async def delete_secret_inputs(self, execution_id: str) -> None:
        """Erase a run's secret inputs. See :meth:`persistence.store.Store.delete_secret_inputs`."""
        self._check_open()
        eid = normalize_execution_id(execution_id)
        with self._lock:
            self._secrets.pop(eid or "", None)

    async def list_executions(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Executions, newest first. See :meth:`persistence.store.Store.list_executions`."""
        self._check_open()
        check_limit(limit)
        wanted = status_filter(statuses)
        with self._lock:
            records = [r for r in self._executions.values() if wanted is None or r.status in wanted]
        records.sort(key=lambda r: (r.created_at, r.execution_id), reverse=True)
        return [_copy_execution(r) for r in records[:limit]]

    async def list_executions_page(
        self,
        *,
        workflow_pack_id: str | None = None,
        statuses: Collection[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[ExecutionRecord]:
        """One keyset page of executions, newest first. See :meth:`persistence.store.Store.list_executions_page`."""
        self._check_open()
        check_limit(limit)
        for name, bound in (("created_after", created_after), ("created_before", created_before)):
            if bound is not None and not isinstance(bound, datetime):
                raise ValueError(f"{name} must be a datetime or None, got {type(bound).__name__}")
        if after is not None and not (
            isinstance(after, tuple) and len(after) == 2 and isinstance(after[0], datetime) and isinstance(after[1], str)
        ):
            raise ValueError(f"after must be a (datetime, str) pair or None, got {after!r}")
        if workflow_pack_id is not None and not isinstance(workflow_pack_id, str):
            raise ValueError(f"workflow_pack_id must be a str or None, got {type(workflow_pack_id).__name__}")
        if workflow_pack_id is not None and len(workflow_pack_id) > MAX_PACK_ID:
            return []  # no pack can have it (SqlStore answers the same)
        wanted = status_filter(statuses)
        low = None if created_after is None else as_utc(created_after)
        high = None if created_before is None else as_utc(created_before)
        position = None if after is None else (as_utc(after[0]), after[1])

        def matches(r: ExecutionRecord) -> bool:
            return (
                (workflow_pack_id is None or r.workflow_pack_id == workflow_pack_id)
                and (wanted is None or r.status in wanted)
                and (low is None or r.created_at >= low)
                and (high is None or r.created_at < high)
                and (position is None or (r.created_at, r.execution_id) < position)
            )

        with self._lock:
            records = [r for r in self._executions.values() if matches(r)]
        records.sort(key=lambda r: (r.created_at, r.execution_id), reverse=True)
        return [_copy_execution(r) for r in records[:limit]]
