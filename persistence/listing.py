"""Listing runs newest first with keyset pagination and an opaque cursor.

Shared by ``GET /v1/workflows/executions`` and ``WorkflowClient.list``, so both page the
same way and accept each other's cursors.

Pagination is keyset, not offset: rows are ordered by ``(created_at, execution_id)``
descending (newest first; the id breaks ties), and the cursor is the position of the last
row of a page. The store answers the next page with ``(created_at, execution_id) < (...)``
(:meth:`persistence.store.Store.list_executions_page`), so a page costs the same at any
depth and runs started while a client pages never shift, repeat or skip rows.

The cursor is opaque to clients: base64url (no padding) of the JSON
``["c1", "<created_at, ISO 8601 UTC with microseconds>", "<execution_id>"]``. It carries
no filters: pass the same filters with it (other filters are allowed and simply apply
from that position).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from persistence.records import ExecutionRecord, as_utc, isoformat_z
from persistence.store import Store
from persistence.validation import normalize_execution_id

__all__ = ["CURSOR_TAG", "MAX_CURSOR", "decode_cursor", "encode_cursor", "list_item", "list_page"]

#: First member of a cursor's JSON (a format version).
CURSOR_TAG = "c1"
#: Longest cursor text accepted (a real one is about 110 characters).
MAX_CURSOR = 512


def encode_cursor(record: ExecutionRecord) -> str:
    """The cursor of the page that follows ``record`` (the last row of a page)."""
    position = [CURSOR_TAG, as_utc(record.created_at).isoformat(timespec="microseconds"), record.execution_id]
    raw = json.dumps(position, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, execution_id)`` position of a cursor made by :func:`encode_cursor`.

    Raises:
        ValueError: not a cursor of this listing.
    """
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, created_at, execution_id = json.loads(raw.decode("ascii"))
        if tag != CURSOR_TAG or not isinstance(created_at, str) or not isinstance(execution_id, str):
            raise ValueError("unknown format")
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None or normalize_execution_id(execution_id) != execution_id:
            raise ValueError("unknown format")
        return as_utc(at), execution_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise ValueError("not a cursor of this listing; pass next_cursor of a previous page") from None


def list_item(record: ExecutionRecord) -> dict[str, Any]:
    """A listing item: the FDD §3.2 status record plus ``created_at`` (the sort key)."""
    return {**record.to_status_dict(), "created_at": isoformat_z(record.created_at)}


async def list_page(
    store: Store,
    *,
    workflow_pack_id: str | None = None,
    statuses: Collection[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of runs, newest first: ``{"items": [list_item...], "next_cursor": str | None}``.

    Args:
        store: the database.
        workflow_pack_id: only this pack's runs.
        statuses: only these statuses (None: all).
        created_after: created at or after (inclusive, aware datetime).
        created_before: created before (exclusive, aware datetime).
        after: the position of a cursor (:func:`decode_cursor`), None for the first page.
        limit: page size (>= 1); ``next_cursor`` is None on the last page.

    Raises:
        ValueError: an unknown status or a limit below 1.
    """
    rows = await store.list_executions_page(
        workflow_pack_id=workflow_pack_id,
        statuses=statuses,
        created_after=created_after,
        created_before=created_before,
        after=after,
        limit=limit + 1,
    )
    page = rows[:limit]
    more = len(rows) > limit
    return {"items": [list_item(r) for r in page], "next_cursor": encode_cursor(page[-1]) if more else None}
