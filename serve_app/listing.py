"""``GET /v1/workflows/executions``: filters, the opaque cursor, and one page of status records.

Pagination is keyset, not offset: rows are ordered by ``(created_at, execution_id)``
descending (newest first; the id breaks ties), and the cursor is the position of the last
row of a page. The store answers the next page with ``(created_at, execution_id) < (...)``
(:meth:`persistence.store.Store.list_executions_page`), so a page costs the same at any
depth and runs started while a client pages never shift, repeat or skip rows.

The cursor is opaque to clients: base64url (no padding) of the JSON
``["c1", "<created_at, ISO 8601 UTC with microseconds>", "<execution_id>"]``. It carries
no filters: pass the same filters with it (other filters are allowed and simply apply
from that position).

Bad values are 422 ``request_invalid`` problems whose ``errors[].parameter`` names the
parameter (``query.cursor``, ``query.created_after`` ...), like FastAPI's own checks.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from fastapi.exceptions import RequestValidationError

from persistence.records import ExecutionRecord, as_utc, isoformat_z
from persistence.validation import normalize_execution_id

__all__ = ["CURSOR_TAG", "decode_cursor", "encode_cursor", "list_item", "parameter_error", "pack_id_filter", "utc_bound"]

#: First member of a cursor's JSON (a format version).
CURSOR_TAG = "c1"
#: Longest cursor text accepted (a real one is about 110 characters).
MAX_CURSOR = 512


def parameter_error(parameter: str, message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 ``request_invalid`` naming the query parameter (``errors[0].parameter = query.<name>``)."""
    return RequestValidationError([{"loc": ("query", parameter), "msg": message, "type": kind}])


def encode_cursor(record: ExecutionRecord) -> str:
    """The cursor of the page that follows ``record`` (the last row of a page)."""
    position = [CURSOR_TAG, as_utc(record.created_at).isoformat(timespec="microseconds"), record.execution_id]
    raw = json.dumps(position, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, execution_id)`` position of a cursor made by :func:`encode_cursor`.

    Raises:
        RequestValidationError: (422, parameter ``cursor``) not a cursor of this API.
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
        raise parameter_error("cursor", "not a cursor of this listing; pass next_cursor of a previous page") from None


def utc_bound(parameter: str, value: datetime | None) -> datetime | None:
    """A ``created_after``/``created_before`` value as aware UTC (naive values are UTC).

    Raises:
        RequestValidationError: (422) an instant that cannot be expressed in UTC (year 1 or 9999 edges).
    """
    if value is None:
        return None
    try:
        return as_utc(value) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        raise parameter_error(parameter, "the instant is out of range once converted to UTC") from None


def pack_id_filter(value: str | None) -> str | None:
    """The ``workflow_pack_id`` filter; refuses what no pack id can hold (NUL).

    Raises:
        RequestValidationError: (422, parameter ``workflow_pack_id``).
    """
    if value is not None and "\x00" in value:
        raise parameter_error("workflow_pack_id", "a pack id cannot contain a NUL character")
    return value


def list_item(record: ExecutionRecord) -> dict[str, Any]:
    """A listing item: the FDD §3.2 status record plus ``created_at`` (the sort key)."""
    return {**record.to_status_dict(), "created_at": isoformat_z(record.created_at)}
