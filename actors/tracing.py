"""W3C Trace Context for outgoing calls: one trace per run, one span per attempt.

Every ``service_call`` and ``http`` attempt carries a ``traceparent`` header
(`W3C Trace Context <https://www.w3.org/TR/trace-context/>`_, version ``00``)::

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-01

* The **trace id** is the run's: derived from the execution id, so it is the same on every
  host that runs the run, after every resume, and needs no storage. An execution id that
  is a UUID (the engine's default) *is* the trace id (its 32 hex digits), so a trace can be
  found from the id a caller got back; any other id is hashed (BLAKE2b, 16 bytes).
* The **parent id** names the attempt: a fresh random span id per attempt.
* Flags ``01`` (sampled): the engine records every attempt.

An incoming ``traceparent`` at run start is not adopted (see ``docs/dsl.md``, "Outbound
HTTP and the allowlist"): the run's trace id is its own, the same across processes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid

__all__ = ["TRACEPARENT", "format_traceparent", "new_span_id", "parse_traceparent", "trace_id_for"]

TRACEPARENT = "traceparent"
"""The header's name (lower-case, as the W3C recommends)."""

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def trace_id_for(execution_id: str) -> str:
    """The trace id (32 lower-case hex digits, never all zero) of a run.

    Args:
        execution_id: the run's id; a UUID gives its own hex digits.
    """
    try:
        trace_id = uuid.UUID(execution_id).hex
    except (ValueError, AttributeError, TypeError):
        trace_id = hashlib.blake2b(str(execution_id).encode("utf-8"), digest_size=16).hexdigest()
    return trace_id if trace_id != _ZERO_TRACE else "0" * 31 + "1"


def new_span_id() -> str:
    """A random span id: 16 lower-case hex digits, never all zero."""
    while True:
        span = secrets.token_hex(8)
        if span != _ZERO_SPAN:
            return span


def format_traceparent(trace_id: str, span_id: str, *, sampled: bool = True) -> str:
    """``00-<trace_id>-<span_id>-01`` (``-00`` when not sampled).

    Raises:
        ValueError: an id is not lower-case hex of the right length, or all zero.
    """
    text = f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
    if parse_traceparent(text) is None:
        raise ValueError(f"not a valid trace id / span id pair: {trace_id!r}, {span_id!r}")
    return text


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a version-00 ``traceparent``, or None if malformed."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return None
    return match.group(1), match.group(2), match.group(3)
