"""Argument checks shared by every Store implementation.

Both backends (and :class:`persistence.store.MemoryStore`) run the same checks before
touching storage, so they refuse the same inputs the same way: PostgreSQL would raise
"value too long" where SQLite silently stores the string, and a malformed execution id
must be "not found", never a driver error.

Programming errors (a wrong type, an out-of-range value) raise ``ValueError``; an id
that cannot exist raises :class:`~dsl.errors.ExecutionNotFoundError` at the call site.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Collection
from datetime import datetime
from enum import Enum
from typing import Any

from dsl.errors import UnstorableValueError
from dsl.loader import escape_pointer
from persistence.records import (
    EXECUTION_STATUSES,
    ISOLATION_MODES,
    MAX_IDEMPOTENCY_KEY,
    MAX_NODE_ID,
    MAX_PACK_ID,
    MAX_STEP_ID,
    MAX_STEP_KEY,
    MAX_STEP_TYPE,
    MAX_VERSION,
    STATUS_QUEUED,
    STATUS_RUNNING,
    STEP_STATUSES,
    StepCheckpoint,
)

__all__ = [
    "CREATE_STATUSES",
    "check_checkpoint",
    "check_length",
    "check_limit",
    "check_new_execution",
    "check_new_pack",
    "check_storable",
    "normalize_execution_id",
    "plain_status",
    "status_filter",
]

#: Statuses a new execution may start in.
CREATE_STATUSES = frozenset({STATUS_QUEUED, STATUS_RUNNING})
assert CREATE_STATUSES <= EXECUTION_STATUSES


def plain_status(status: object) -> object:
    """``status`` as a plain ``str`` when it is a str-valued ``Enum`` (e.g. ``dsl.state.ExecutionStatus``).

    Anything else is returned unchanged for the caller's membership check to judge.
    """
    if isinstance(status, Enum) and isinstance(status.value, str):
        return status.value
    return status


def normalize_execution_id(execution_id: object) -> str | None:
    """The canonical (lowercase, hyphenated) form of a uuid string, or ``None`` if it is not one.

    Args:
        execution_id: anything a caller passed as an id.

    Returns:
        36 characters such as ``"0b5c63c2-6a3f-4c2e-9a7e-3d4b9f1e2a10"``, or ``None`` for
        non-strings and malformed ids (so callers can answer "not found").
    """
    if not isinstance(execution_id, str) or len(execution_id) != 36:
        return None
    try:
        return str(uuid.UUID(execution_id))
    except ValueError:
        return None


#: Largest value of the schema's ``integer`` columns (``attempt``, ``owner_epoch``, ``seq``).
MAX_INT32 = 2**31 - 1
#: Characters no text column can hold: NUL (PostgreSQL refuses it) and UTF-16 surrogates
#: (not encodable as UTF-8; a Python string holds one only unpaired or from surrogateescape).
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")


def check_length(name: str, value: object, limit: int, *, required: bool = True) -> None:
    """Refuse a string that is missing, empty, longer than its column, or unstorable.

    Args:
        name: the argument's name, for the message.
        value: the value given.
        limit: the column's width in characters.
        required: when false, ``None`` is accepted.

    Raises:
        ValueError: ``value`` is not a string, is empty, has more than ``limit`` characters,
            or holds a NUL or surrogate character (no database stores it alike: PostgreSQL
            refuses NUL, UTF-8 cannot encode a surrogate), so every store refuses it alike.
    """
    if value is None and not required:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long; at most {limit} are allowed")
    bad = _UNSTORABLE_CHAR.search(value)
    if bad is not None:
        raise ValueError(f"{name} holds U+{ord(bad.group()):04X} at index {bad.start()}, which cannot be stored")


def _check_dict(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (JSON object), got {type(value).__name__}")


def check_new_pack(pack_id: object, version: object, document: object, source_text: object) -> None:
    """Checks for ``save_pack``.

    Raises:
        ValueError: empty or too long id/version, a non-dict document, a non-str source.
    """
    check_length("pack_id", pack_id, MAX_PACK_ID)
    check_length("version", version, MAX_VERSION)
    _check_dict("document", document)
    if source_text is not None and not isinstance(source_text, str):
        raise ValueError(f"source_text must be a str or None, got {type(source_text).__name__}")


#: Width of ``execution_secrets.name`` (migration 0003).
MAX_SECRET_NAME = 200


def check_secret_inputs(secret_inputs: object) -> None:
    """Checks for ``create_execution(secret_inputs=...)``: a dict (or None) of named values.

    Raises:
        ValueError: not a dict, or a name that is not a string of 1 to
            :data:`MAX_SECRET_NAME` storable characters (:func:`check_length`).
    """
    if secret_inputs is None:
        return
    if not isinstance(secret_inputs, dict):
        raise ValueError(f"secret_inputs must be a dict or None, got {type(secret_inputs).__name__}")
    for name in secret_inputs:
        check_length("secret_inputs name", name, MAX_SECRET_NAME)


def check_new_execution(
    execution_id: object,
    workflow_pack_id: object,
    version: object,
    pack_document: object,
    inputs: object,
    options: object,
    isolation: object,
    status: object,
) -> str:
    """Checks for ``create_execution``.

    Returns:
        The canonical form of ``execution_id``.

    Raises:
        ValueError: ``execution_id`` is not a uuid string; a string is empty or too long;
            a document is not a dict; ``isolation`` or ``status`` is not allowed.
    """
    eid = normalize_execution_id(execution_id)
    if eid is None:
        raise ValueError(f"execution_id must be a uuid string (36 characters), got {execution_id!r}")
    check_length("workflow_pack_id", workflow_pack_id, MAX_PACK_ID)
    check_length("version", version, MAX_VERSION)
    _check_dict("pack_document", pack_document)
    _check_dict("inputs", inputs)
    _check_dict("options", options)
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {sorted(ISOLATION_MODES)}, got {isolation!r}")
    if status not in CREATE_STATUSES:
        raise ValueError(f"a new execution's status must be one of {sorted(CREATE_STATUSES)}, got {status!r}")
    return eid


def check_checkpoint(checkpoint: StepCheckpoint) -> StepCheckpoint:
    """Refuse a checkpoint the schema could not store faithfully.

    Returns:
        The checkpoint, with an ``Enum`` status replaced by its plain string.

    Raises:
        ValueError: not a :class:`StepCheckpoint`; status not in ``STEP_STATUSES``; attempt
            not an int >= 1; a string empty or too long; a naive datetime; ``error`` not a
            dict.
    """
    if not isinstance(checkpoint, StepCheckpoint):
        raise ValueError(f"expected a StepCheckpoint, got {type(checkpoint).__name__}")
    status = plain_status(checkpoint.status)
    if status is not checkpoint.status:
        checkpoint = dataclasses.replace(checkpoint, status=status)  # type: ignore[arg-type]
    check_length("step_key", checkpoint.step_key, MAX_STEP_KEY)
    check_length("step_id", checkpoint.step_id, MAX_STEP_ID)
    check_length("step_type", checkpoint.step_type, MAX_STEP_TYPE)
    check_length("idempotency_key", checkpoint.idempotency_key, MAX_IDEMPOTENCY_KEY, required=False)
    check_length("node_id", checkpoint.node_id, MAX_NODE_ID, required=False)
    if checkpoint.status not in STEP_STATUSES:
        raise ValueError(f"checkpoint status must be one of {sorted(STEP_STATUSES)}, got {checkpoint.status!r}")
    attempt: Any = checkpoint.attempt
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_INT32:
        raise ValueError(f"checkpoint attempt must be an int from 1 to {MAX_INT32}, got {attempt!r}")
    for field in ("started_at", "ended_at"):
        value = getattr(checkpoint, field)
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"checkpoint {field} must be a timezone-aware datetime, got {value!r}")
    if checkpoint.error is not None and not isinstance(checkpoint.error, dict):
        raise ValueError(f"checkpoint error must be a dict or None, got {type(checkpoint.error).__name__}")
    return checkpoint


def status_filter(statuses: Collection[object] | None) -> set[object] | None:
    """The set of plain status strings to filter on (a lone string counts as one status)."""
    if statuses is None:
        return None
    if isinstance(statuses, str):
        statuses = [statuses]
    return {plain_status(s) for s in statuses}


def check_limit(limit: object) -> None:
    """Refuse a ``list_executions`` limit that is not an int >= 1.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")


def check_storable(value: Any, pointer: str = "") -> None:
    """Refuse strings (keys too) that PostgreSQL cannot store: NUL and unpaired surrogates.

    Walks nested dicts and lists without recursion (any depth).

    Args:
        value: a JSON-like value (a pack document, a request body, run inputs).
        pointer: JSON pointer of ``value`` itself, prefixed to the reported pointer.

    Raises:
        UnstorableValueError: with the JSON pointer of the first such string.
    """
    stack: list[tuple[Any, str]] = [(value, pointer)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if not _storable(node):
                raise UnstorableValueError(where)
        elif isinstance(node, dict):
            for key, child in node.items():
                child_pointer = f"{where}/{escape_pointer(str(key))}"
                if not _storable(str(key)):
                    raise UnstorableValueError(child_pointer)
                stack.append((child, child_pointer))
        elif isinstance(node, list):
            stack.extend((child, f"{where}/{i}") for i, child in enumerate(node))


def _storable(text: str) -> bool:
    return _UNSTORABLE_CHAR.search(text) is None
