"""Event subscriptions: delivery of the event outbox to webhooks and to the Ledger's audit log.

FDD §2.4 "Events: Publish workflow events" and §4.1 "Ledger Service: Audit logging".
The events themselves are written by the store, in the transaction of each state change
(:mod:`persistence.outbox`); this module sends them on.

Subscriptions are configuration (trusted, like the service registry), never pack input:

* ``CORTX_EVENT_SUBSCRIPTIONS``: a YAML or JSON file::

      subscriptions:
        - name: ops-hook                      # [A-Za-z0-9._-], unique, at most 100 characters
          url: https://hooks.example.com/cortx
          events: ["execution.*", "step.failed", "order.*"]   # fnmatch patterns; default ["*"]
          signing_secret: OPS_HOOK_SECRET     # a named secret (CORTX_SECRET_<NAME> or the secrets file)
          timeout_seconds: 10                 # per attempt (the whole answer), in s
          initial_delay_ms: 500               # first retry delay; doubles per failed attempt
          max_delay_ms: 60000                 # cap of the retry delay

* the **Ledger** (``ledger-audit``): when the service registry has a ``ledger`` service
  and ``CORTX_LEDGER_AUDIT`` is not false, every event is also posted to
  ``<ledger base_url>/v1/audit`` as an audit record, with the registry's headers and
  ``Idempotency-Key: <event_id>``.

Delivery (one :class:`EventDelivery` loop per shared ExecutionHost):

* **Who delivers what**: the host that owns a run (the hash of its id) delivers its
  events; shared host 0 also delivers those of dedicated runs. One deliverer per run
  keeps a run's events in order.
* **At least once, in order per run**: per subscription and run, a durable cursor
  (``event_deliveries.delivered_seq``) says which events were acknowledged (a 2xx
  answer). Events are sent one at a time from ``delivered_seq + 1``; the cursor moves
  after each acknowledgement. A failure (not 2xx, a timeout, a refused connection) stops
  that run's delivery for that subscription until ``next_attempt_at``; the delay doubles
  per failed attempt from ``initial_delay_ms`` up to ``max_delay_ms``, and retries go on
  until the receiver acknowledges. Other runs are not held up, and subscriptions are
  delivered side by side: a slow or failing receiver delays only its own deliveries. A restarted host starts
  again from the cursors: only unacknowledged events are sent again, so a receiver sees
  an event twice at most when the host died between its 2xx and the cursor write;
  ``webhook-id`` is the deduplication key.
* **Signing** (Standard Webhooks, :func:`actors.webhooks.sign`): ``webhook-id`` is the
  event's stable id (``evt_`` + 32 hex digits, :func:`persistence.outbox.event_id`), the
  same on every attempt; ``webhook-timestamp`` is the attempt's Unix time in s;
  ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.
* **Finding work**: each pass (every ``poll_s``, 0.5 s) reads the runs with events written
  since the last pass (less :data:`SCAN_SLACK_S` for clock skew and slow commits) from the
  events' ``created_at`` index, plus the runs still owed events from earlier passes. At
  start a host looks back :data:`LOOKBACK_S` (7 days); events older than that which were
  never acknowledged are not sent again.

Bodies (compact JSON): a webhook receives ``{"id", "type", "timestamp", "data":
{"execution_id", "seq", "step_key"?, "attempt"?, ...payload}}``; the Ledger receives
``{"record_type": "workflow.event", "event_id", "execution_id", "seq", "type", "at",
"step_key", "attempt", "data": payload}``. Payloads never carry secrets or step outputs
(:mod:`actors.outbox_events`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx

from actors.secrets import read_config_file, resolve_secret
from actors.webhooks import encode_body, sign
from dsl.errors import ConfigurationError, SecretNotFoundError
from dsl.secrets import SECRET_NAME_PATTERN
from persistence.outbox import StoredEvent
from persistence.records import isoformat_z, utc_now

__all__ = [
    "LEDGER_AUDIT_ENDPOINT",
    "LEDGER_SUBSCRIPTION",
    "LOOKBACK_S",
    "SUBSCRIPTIONS_ENV",
    "EventDelivery",
    "Subscription",
    "ledger_subscription",
    "load_subscriptions",
    "parse_subscriptions",
    "retry_delay_ms",
]

log = logging.getLogger("cortx.events")

SUBSCRIPTIONS_ENV: Final = "CORTX_EVENT_SUBSCRIPTIONS"
#: Name of the built-in subscription that writes audit records to the Ledger (FDD §4.1).
LEDGER_SUBSCRIPTION: Final = "ledger-audit"
#: Path of the Ledger's audit endpoint below its registry ``base_url``.
LEDGER_AUDIT_ENDPOINT: Final = "/v1/audit"
#: A host that starts looks back this far (s) for unacknowledged events.
LOOKBACK_S: Final = 7 * 24 * 3600.0
#: Each pass re-reads events this much older (s) than the previous pass: clocks and commits lag.
SCAN_SLACK_S: Final = 30.0
#: Events read per run per pass, and runs delivered at once per subscription.
BATCH: Final = 100
CONCURRENCY: Final = 8

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SECRET = re.compile(SECRET_NAME_PATTERN)
_KEYS = frozenset({"name", "url", "events", "signing_secret", "timeout_seconds", "initial_delay_ms", "max_delay_ms"})


@dataclass(frozen=True)
class Subscription:
    """Where events go, which ones, and how they are signed and retried.

    Attributes:
        name: unique name, also the key of its delivery cursors (at most 100 characters).
        url: absolute ``http(s)`` URL the events are posted to.
        events: ``fnmatch`` patterns of event types to deliver (``*``, ``step.*``);
            events that match none are skipped (their cursor moves on).
        signing_secret: named secret whose value signs webhook deliveries; None for the Ledger.
        kind: ``webhook`` (Standard Webhooks body and headers) or ``ledger`` (audit record).
        headers: extra request headers (the registry's, for the Ledger).
        timeout_seconds: limit of one attempt, in s.
        initial_delay_ms: delay before the first retry, in ms; doubles per failed attempt.
        max_delay_ms: cap of the retry delay, in ms.
    """

    name: str
    url: str
    events: tuple[str, ...] = ("*",)
    signing_secret: str | None = None
    kind: Literal["webhook", "ledger"] = "webhook"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    initial_delay_ms: int = 500
    max_delay_ms: int = 60_000

    def wants(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this subscription."""
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)


def retry_delay_ms(subscription: Subscription, attempts: int) -> int:
    """Delay after ``attempts`` (>= 1) failed attempts at one event: ``initial * 2**(attempts-1)``, capped, in ms."""
    exponent = min(max(attempts, 1) - 1, 30)
    return int(min(subscription.initial_delay_ms * (2**exponent), subscription.max_delay_ms))


def parse_subscriptions(data: Any, source: str = SUBSCRIPTIONS_ENV) -> tuple[Subscription, ...]:
    """Check a subscriptions document (module docstring) and build the subscriptions.

    Args:
        data: the parsed YAML/JSON: ``{"subscriptions": [...]}`` (or ``None``: none).
        source: where it came from, for messages.

    Raises:
        ConfigurationError: named after the field path (``subscriptions[1].url``) with the
            value and the rule; a signing secret's value is never read here.
    """
    if data is None:
        return ()
    if not isinstance(data, dict) or set(data) - {"subscriptions"}:
        raise ConfigurationError(source, _short(data), "must be a mapping with one key, 'subscriptions' (a list)")
    items = data.get("subscriptions") or []
    if not isinstance(items, list):
        raise ConfigurationError(f"{source}: subscriptions", _short(items), "must be a list")
    out: list[Subscription] = []
    for index, item in enumerate(items):
        where = f"{source}: subscriptions[{index}]"
        if not isinstance(item, dict):
            raise ConfigurationError(where, _short(item), "must be a mapping")
        unknown = sorted(str(k) for k in set(item) - _KEYS)
        if unknown:
            raise ConfigurationError(f"{where}.{unknown[0]}", item[unknown[0]], f"unknown key; allowed: {', '.join(sorted(_KEYS))}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name == LEDGER_SUBSCRIPTION:
            raise ConfigurationError(f"{where}.name", name, "must be 1 to 100 of A-Z a-z 0-9 . _ - (not 'ledger-audit')")
        if name in {s.name for s in out}:
            raise ConfigurationError(f"{where}.name", name, "must be unique")
        url = item.get("url")
        if not isinstance(url, str) or not _is_http_url(url):
            raise ConfigurationError(f"{where}.url", url, "must be an absolute http:// or https:// URL without user-info")
        events = item.get("events", ["*"])
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, list) or not events or not all(isinstance(e, str) and e.strip() for e in events):
            raise ConfigurationError(f"{where}.events", events, "must be a non-empty list of event type patterns")
        secret = item.get("signing_secret")
        if not isinstance(secret, str) or not _SECRET.match(secret):
            raise ConfigurationError(f"{where}.signing_secret", secret, f"must name a secret ({SECRET_NAME_PATTERN})")
        numbers = {
            "timeout_seconds": (10.0, 0.001, 300.0),
            "initial_delay_ms": (500, 1, 3_600_000),
            "max_delay_ms": (60_000, 1, 86_400_000),
        }
        values: dict[str, Any] = {}
        for key, (default, low, high) in numbers.items():
            value = item.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigurationError(f"{where}.{key}", value, f"must be a number from {low} to {high}")
            values[key] = value
        if values["max_delay_ms"] < values["initial_delay_ms"]:
            raise ConfigurationError(f"{where}.max_delay_ms", values["max_delay_ms"], "must be >= initial_delay_ms")
        out.append(Subscription(
            name=name, url=url, events=tuple(e.strip() for e in events), signing_secret=secret,
            timeout_seconds=float(values["timeout_seconds"]), initial_delay_ms=int(values["initial_delay_ms"]),
            max_delay_ms=int(values["max_delay_ms"]),
        ))
    return tuple(out)


def load_subscriptions(path: str | Path) -> tuple[Subscription, ...]:
    """Read and check the subscriptions file (``.json`` as JSON, anything else as YAML).

    Raises:
        ConfigurationError: (``CORTX_EVENT_SUBSCRIPTIONS``) unreadable, not YAML/JSON, or invalid.
    """
    data = read_config_file(path, SUBSCRIPTIONS_ENV)
    return parse_subscriptions(data, f"{SUBSCRIPTIONS_ENV} ({path})")


def ledger_subscription(registry: Any) -> Subscription | None:
    """The Ledger audit subscription when ``registry`` has a ``ledger`` service, else None (FDD §4.1)."""
    if "ledger" not in registry:
        return None
    ledger = registry.get("ledger")
    return Subscription(
        name=LEDGER_SUBSCRIPTION, url=ledger.base_url.rstrip("/") + LEDGER_AUDIT_ENDPOINT, kind="ledger",
        headers=dict(ledger.headers), timeout_seconds=float(ledger.timeout_seconds),
    )


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host, no user-info and no whitespace."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc
            and not any(c.isspace() for c in url))


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 200 else text[:200] + "..."


def _data(event: StoredEvent) -> dict[str, Any]:
    data: dict[str, Any] = {"execution_id": event.execution_id, "seq": event.seq}
    if event.step_key is not None:
        data["step_key"] = event.step_key
    if event.attempt is not None:
        data["attempt"] = event.attempt
    for key, value in event.payload.items():
        data.setdefault(key, value)
    return data


class EventDelivery:
    """The delivery loop of one ExecutionHost (module docstring).

    Args:
        store: the host's store (``persistence.store.Store``).
        subscriptions: where events go.
        owns: ``owns(execution_id, isolation)``: whether this host delivers that run.
        secrets_file: where named signing secrets are read (``Settings.secrets_file``).
        poll_s: seconds between passes.
    """

    def __init__(
        self,
        store: Any,
        subscriptions: Sequence[Subscription],
        *,
        owns: Callable[[str, str], bool],
        secrets_file: str | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self._store = store
        self._subscriptions = tuple(subscriptions)
        self._owns = owns
        self._secrets_file = secrets_file
        self._poll_s = poll_s
        self._last_scan: Any = None
        self._owed: dict[str, int] = {}  # runs this host delivers -> their last known seq
        self._client: httpx.AsyncClient | None = None

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The subscriptions this loop delivers to."""
        return self._subscriptions

    async def run_forever(self) -> None:
        """Deliver until cancelled; a failed pass (database down) is logged and tried again."""
        try:
            while True:
                try:
                    await self.pass_once()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the next pass tries again
                    log.warning("event delivery pass failed", exc_info=True)
                await asyncio.sleep(self._poll_s)
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def pass_once(self) -> int:
        """One pass over every subscription; return how many events were acknowledged."""
        if not self._subscriptions:
            return 0
        now = utc_now()
        since = now - timedelta(seconds=LOOKBACK_S) if self._last_scan is None else self._last_scan - timedelta(
            seconds=SCAN_SLACK_S)
        for head in await self._store.recent_event_heads(since):
            if self._owns(head.execution_id, head.isolation):
                self._owed[head.execution_id] = max(self._owed.get(head.execution_id, 0), head.last_seq)
        self._last_scan = now
        settled: set[str] = set(self._owed)
        owed = dict(self._owed)

        async def deliver(subscription: Subscription) -> int:
            cursors = await self._store.delivery_cursors(subscription.name, list(owed))
            due = []
            for execution_id, last in owed.items():
                cursor = cursors.get(execution_id)
                done = cursor.delivered_seq if cursor else 0
                if done >= last:
                    continue
                settled.discard(execution_id)
                if cursor is None or cursor.next_attempt_at is None or cursor.next_attempt_at <= now:
                    due.append((execution_id, done, cursor.attempts if cursor else 0))
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(execution_id: str, done: int, attempts: int) -> int:
                async with gate:
                    return await self._deliver_run(subscription, execution_id, done, attempts)

            return sum(await asyncio.gather(*(one(*item) for item in due)))

        # Subscriptions are delivered side by side: a slow receiver holds up only its own.
        delivered = sum(await asyncio.gather(*(deliver(s) for s in self._subscriptions)))
        for execution_id in settled:  # every subscription has all it knew of: forget until new events come
            self._owed.pop(execution_id, None)
        return delivered

    async def _deliver_run(self, subscription: Subscription, execution_id: str, done: int, attempts: int) -> int:
        """Send one run's events after ``done`` in order; stop at the first failure."""
        sent = 0
        skipped_to = done
        for event in await self._store.load_events(execution_id, after=done, limit=BATCH):
            if not subscription.wants(event.type):
                skipped_to = event.seq
                continue
            error = await self._send(subscription, event)
            if error is not None:
                if skipped_to > done:
                    await self._store.ack_delivery(subscription.name, execution_id, skipped_to)
                delay = retry_delay_ms(subscription, attempts + 1)
                await self._store.delivery_failed(
                    subscription.name, execution_id, error=error, retry_at=utc_now() + timedelta(milliseconds=delay)
                )
                log.warning("event %s of %s to %s failed (%s); retry in %d ms",
                            event.seq, execution_id, subscription.name, error, delay)
                return sent
            await self._store.ack_delivery(subscription.name, execution_id, event.seq)
            done = skipped_to = event.seq
            attempts = 0
            sent += 1
        if skipped_to > done:
            await self._store.ack_delivery(subscription.name, execution_id, skipped_to)
        return sent

    async def _send(self, subscription: Subscription, event: StoredEvent) -> str | None:
        """POST one event; None when acknowledged (2xx), else why not (one line, no secret)."""
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        headers = {"content-type": "application/json", **subscription.headers}
        if subscription.kind == "ledger":
            body = encode_body({
                "record_type": "workflow.event", "event_id": event.event_id, "execution_id": event.execution_id,
                "seq": event.seq, "type": event.type, "at": isoformat_z(event.created_at),
                "step_key": event.step_key, "attempt": event.attempt, "data": event.payload,
            })
            headers["idempotency-key"] = event.event_id
        else:
            body = encode_body({"id": event.event_id, "type": event.type, "timestamp": isoformat_z(event.created_at),
                                "data": _data(event)})
            try:
                secret = resolve_secret(str(subscription.signing_secret), secrets_file=self._secrets_file)
                timestamp = int(time.time())
                headers.update({
                    "webhook-id": event.event_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(secret, event.event_id, timestamp, body),
                })
            except (SecretNotFoundError, ConfigurationError, ValueError) as exc:
                return f"signing secret unavailable: {type(exc).__name__}"
        try:
            # httpx's timeout bounds each read; a receiver trickling bytes would never trip it,
            # so the whole attempt also has a deadline.
            async with asyncio.timeout(subscription.timeout_seconds):
                answer = await self._client.post(
                    subscription.url, content=body, headers=headers, timeout=subscription.timeout_seconds
                )
        except TimeoutError:
            return f"no complete answer within {subscription.timeout_seconds} s from POST {subscription.url}"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} from POST {subscription.url}"
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code} from POST {subscription.url}"
