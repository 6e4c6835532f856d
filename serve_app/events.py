"""A run's events: from its ExecutionHost while it holds them, else rebuilt from checkpoints; and SSE.

Sources (docs/api.md, "Events"):

* **outbox** — the events stored with each state change (:mod:`persistence.outbox`):
  durable, numbered 1, 2, 3, ... per run without gaps, the same across host restarts. Used
  whenever the run has stored events (every run started since the outbox exists, with
  persistence on); the other two sources speak only for runs without them.
* **host** — the ExecutionHost running the run keeps its events in memory
  (:meth:`actors.host.ExecutionHost.events`): ``execution.started``/``resumed``,
  ``step.started``, ``step.<status>`` per attempt, ``step.retrying`` and the final
  ``execution.<status>``. A host keeps them after the run ends, until it restarts (or
  forgets old runs); ``seq`` restarts at 1 for each incarnation of the run (a resume).
* **checkpoints** — a run no host holds (finished before a restart, or never resumed):
  :func:`synthesize` rebuilds ``execution.started`` (when it started), one
  ``step.<status>`` per checkpoint (attempt) in checkpoint order (by end time) and, once
  it ended, the final ``execution.<status>``, each marked ``"synthesized": true``,
  numbered 1, 2, ... in that order.

``at`` is ISO 8601 UTC (``...Z``, milliseconds) in both.

The stream (:func:`event_stream`) long-polls the host (``events(after, timeout)``) and
writes each event as one SSE message (``id: <seq>``, ``event: <type>``, ``data: <json>``);
it ends right after the final execution event. With no event for ``keepalive_s`` it writes
a ``: keep-alive`` comment. Without a host it polls the database every ``poll_s`` and
sends synthesized events. If the host goes away, restarts (its resumed copy of the run
numbers events from 1 again) or its copy goes stale (the run ended in the database but not
there), the stream goes on from the database, sending the events it has not sent yet (by
type, step key and attempt) with ids that keep increasing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse
from sqlalchemy.exc import DBAPIError

from dsl.errors import ConfigurationError
from persistence.outbox import TERMINAL_EVENT_TYPES
from persistence.records import ExecutionRecord, StepCheckpoint, isoformat_z
from serve_app.errors import EngineUnavailableError, EventStreamsExhaustedError
from serve_app.schemas import SSE_MEDIA_TYPE

if TYPE_CHECKING:
    from serve_app.backend import Backend

__all__ = [
    "KEEPALIVE_S",
    "POLL_S",
    "EventStreamResponse",
    "StreamSlots",
    "event_key",
    "event_stream",
    "host_event",
    "sse_message",
    "synthesize",
]

log = logging.getLogger("cortx.api")

#: Longest silence on a stream before a ``: keep-alive`` comment (and the host long-poll timeout).
KEEPALIVE_S = 15.0
#: How often a stream without a host re-reads the database.
POLL_S = 1.0
#: How often a stream reads the outbox for new events, in s.
OUTBOX_POLL_S = 0.25
#: Host polls in a row that report a run not ended while the database says it ended.
STALE_POLLS = 2


class StreamSlots:
    """The open event streams of one replica, at most ``limit`` (``CORTX_API_MAX_EVENT_STREAMS``).

    A stream holds one of the replica's request slots until its run ends; capping streams
    below Serve's ``max_ongoing_requests`` keeps slots for every other request, liveness
    and readiness included (docs/api.md, "Open requests per replica").
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> StreamSlots:
        """Count one more open stream; give it back with :meth:`give_back`.

        Raises:
            EventStreamsExhaustedError: ``limit`` streams are open (503, ``Retry-After``).
        """
        if self.open >= self.limit:
            raise EventStreamsExhaustedError(self.limit)
        self.open += 1
        return self

    def give_back(self) -> None:
        """One stream has ended (its run ended, or its client went away)."""
        self.open -= 1


class EventStreamResponse(StreamingResponse):
    """The ``text/event-stream`` answer of one run; gives its slot back however it ends.

    Args:
        content: the SSE text (:func:`event_stream`).
        slot: the :class:`StreamSlots` a slot was taken from (taken by the caller, so a
            refusal is a problem answer before anything is sent).
    """

    def __init__(self, content: AsyncIterator[str], slot: StreamSlots) -> None:
        super().__init__(
            content, media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._slot: StreamSlots | None = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._slot is not None:
                self._slot.give_back()
                self._slot = None


def host_event(event: dict[str, Any]) -> dict[str, Any]:
    """A host event as answered: ``at`` (epoch seconds there) as ISO 8601 UTC text."""
    at = event.get("at")
    if isinstance(at, int | float):
        return {**event, "at": isoformat_z(datetime.fromtimestamp(at, UTC))}
    return dict(event)


def synthesize(record: ExecutionRecord, checkpoints: list[StepCheckpoint]) -> list[dict[str, Any]]:
    """The events of a run rebuilt from its record and checkpoints (see the module docstring)."""
    events: list[dict[str, Any]] = []

    def add(kind: str, at: datetime | None, **fields: Any) -> None:
        event = {"seq": len(events) + 1, "type": kind, "at": isoformat_z(at or record.updated_at)}
        event.update({k: v for k, v in fields.items() if v is not None})
        event["synthesized"] = True
        events.append(event)

    if record.started_at is not None:
        add("execution.started", record.started_at)
    for cp in checkpoints:
        message = (cp.error or {}).get("message") if isinstance(cp.error, dict) else None
        add(f"step.{cp.status}", cp.ended_at, step_key=cp.step_key, step_type=cp.step_type, attempt=cp.attempt,
            duration_ms=cp.duration_ms, error=message if isinstance(message, str) else None)
    if record.is_terminal:
        add(f"execution.{record.status}", record.completed_at, error=record.error)
    return events


def event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies an event across sources: type, step key, attempt."""
    return event.get("type"), event.get("step_key"), event.get("attempt")


def sse_message(event: dict[str, Any]) -> str:
    """One Server-Sent Events message: ``id``, ``event`` and one ``data`` line of JSON."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    kind = str(event.get("type", "message")).replace("\n", " ").replace("\r", " ")
    return f"id: {event['seq']}\nevent: {kind}\ndata: {data}\n\n"


async def event_stream(
    backend: Backend,
    record: ExecutionRecord,
    after: int,
    *,
    keepalive_s: float = KEEPALIVE_S,
    poll_s: float = POLL_S,
) -> AsyncIterator[str]:
    """The SSE text of a run's events with ``seq > after``, until the run has ended.

    Errors once the stream has started (the database or Ray went away) end it with a
    ``: error`` comment; the client reconnects with ``Last-Event-ID``.
    """
    execution_id = record.execution_id
    yield f": events of execution {execution_id}\n\n"
    try:
        async for chunk in _events(backend, record, after, keepalive_s, poll_s):
            yield chunk
    except (EngineUnavailableError, ConfigurationError, DBAPIError, OSError) as exc:
        log.warning("event stream of %s ended early: %s", execution_id, type(exc).__name__)
        yield ": error: the stream ended early; reconnect with Last-Event-ID\n\n"


async def _events(
    backend: Backend, record: ExecutionRecord, after: int, keepalive_s: float, poll_s: float
) -> AsyncIterator[str]:
    execution_id = record.execution_id
    # The outbox speaks for a run with stored events, and for one never claimed yet on a
    # durable store: its claim writes its first event there (persistence.outbox).
    unclaimed = record.owner_epoch == 0 and not record.is_terminal and not backend.settings.store_url.startswith("memory:")
    if unclaimed or await backend.stored_events(execution_id, after) is not None:
        async for chunk in _outbox_events(backend, execution_id, after, keepalive_s):
            yield chunk
        return
    sent: set[tuple[Any, ...]] = set()
    last: dict[str, Any] | None = None
    from_host = True
    stale = 0
    while from_host:
        live = await backend.host_events(execution_id, record.isolation, after, keepalive_s)
        if live is None:
            from_host = False
            break
        for raw in live["events"]:
            last = host_event(raw)
            sent.add(event_key(last))
            after = max(after, int(last["seq"]))
            yield sse_message(last)
        if live["done"]:
            return
        if not live["events"]:
            # Nothing for a whole poll: make sure the host still has the run we follow (a host
            # that restarted numbers a resumed run's events from 1 again) and that its copy of
            # the run is not stale.
            if after > 0 and not await _host_has(backend, record, after, last):
                from_host = False
                break
            record = await backend.record(execution_id)
            stale = stale + 1 if record.is_terminal else 0
            if stale >= STALE_POLLS:
                from_host = False
                break
            yield ": keep-alive\n\n"
    # From the database. Started here (no host event sent): ``after`` counts synthesized events.
    first = not sent
    quiet_since = time.monotonic()
    while True:
        record, checkpoints = await backend.record_and_checkpoints(execution_id)
        events = synthesize(record, checkpoints)
        if first:
            sent.update(event_key(e) for e in events if e["seq"] <= after)
            first = False
        for event in events:
            key = event_key(event)
            if key in sent:
                continue
            sent.add(key)
            after = max(int(event["seq"]), after + 1)
            quiet_since = time.monotonic()
            yield sse_message({**event, "seq": after})
        if record.is_terminal:
            return
        if time.monotonic() - quiet_since >= keepalive_s:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)


async def _outbox_events(backend: Backend, execution_id: str, after: int, keepalive_s: float) -> AsyncIterator[str]:
    """The stream from the outbox: poll it every ``OUTBOX_POLL_S``; end after the final event.

    The record is read *before* the events: the final event is committed with the final
    status, so a run that had ended then has all its events in the read that follows.
    """
    quiet_since = time.monotonic()
    while True:
        record = await backend.record(execution_id)
        events = await backend.stored_events(execution_id, after) or []
        for event in events:
            after = int(event["seq"])
            quiet_since = time.monotonic()
            yield sse_message(event)
            if event["type"] in TERMINAL_EVENT_TYPES:
                return
        if events:
            continue
        if record.is_terminal:
            return
        if time.monotonic() - quiet_since >= keepalive_s:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(OUTBOX_POLL_S)


async def _host_has(backend: Backend, record: ExecutionRecord, seq: int, last: dict[str, Any] | None) -> bool:
    """Whether the host holds event ``seq`` of the run, and it is ``last`` (the one sent) when known."""
    probe = await backend.host_events(record.execution_id, record.isolation, seq - 1, 0.0)
    held = [host_event(e) for e in (probe or {}).get("events", []) if e.get("seq") == seq]
    if not held:
        return False
    return last is None or (held[0]["type"], held[0]["at"]) == (last["type"], last["at"])
