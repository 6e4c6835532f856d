"""``GET /v1/workflows/executions``: the query parameters' checks.

The paging itself (keyset pagination, the opaque cursor, the items) is
:mod:`persistence.listing`, shared with ``WorkflowClient.list``; this module turns its
refusals into the API's 422 problems.

Bad values are 422 ``request_invalid`` problems whose ``errors[].parameter`` names the
parameter (``query.cursor``, ``query.created_after`` ...), like FastAPI's own checks.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.exceptions import RequestValidationError

from persistence import listing as _listing
from persistence.listing import CURSOR_TAG, MAX_CURSOR, encode_cursor, list_item
from persistence.records import as_utc

__all__ = [
    "CURSOR_TAG", "MAX_CURSOR", "decode_cursor", "encode_cursor", "list_item", "parameter_error", "pack_id_filter",
    "utc_bound",
]


def parameter_error(parameter: str, message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 ``request_invalid`` naming the query parameter (``errors[0].parameter = query.<name>``)."""
    return RequestValidationError([{"loc": ("query", parameter), "msg": message, "type": kind}])


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, execution_id)`` position of a cursor (:func:`persistence.listing.decode_cursor`).

    Raises:
        RequestValidationError: (422, parameter ``cursor``) not a cursor of this API.
    """
    try:
        return _listing.decode_cursor(cursor)
    except ValueError as exc:
        raise parameter_error("cursor", str(exc)) from None


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

