"""The HTTP work of a ``service_call`` step: one request, its outcome as data.

:func:`call_http` never raises for a failed call. It returns a dict the step runner
records and the retry policy reads (``retryable``, ``retry_after_s``), so failures
cross Ray process boundaries as plain data instead of exceptions.

One pooled :class:`httpx.Client` per process is created on first use and reused, so
consecutive calls to the same host share kept-alive connections (a TLS or TCP
handshake per step would dominate short calls). After a fork the child makes its own.

Secrets: messages name the method and URL (user-info removed) but never header values;
``body_excerpt`` is what the *server* answered.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dsl.http_spec import RESERVED_HEADERS

__all__ = ["BODY_EXCERPT_CHARS", "RETRYABLE_STATUSES", "call_http", "close_client"]

BODY_EXCERPT_CHARS = 500
"""How much of a failed response's body is kept in ``error.body_excerpt``."""

RETRYABLE_STATUSES = frozenset({408, 429})
"""Non-5xx statuses worth retrying (every 5xx is retryable too)."""

_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0)

_client: httpx.Client | None = None
_client_pid: int | None = None
_client_lock = threading.Lock()


def _get_client() -> httpx.Client:
    global _client, _client_pid
    client, pid = _client, os.getpid()
    if client is not None and _client_pid == pid:
        return client
    with _client_lock:
        if _client is None or _client_pid != pid:
            # A client inherited through fork shares sockets with the parent: start afresh.
            _client = httpx.Client(limits=_POOL_LIMITS, follow_redirects=False, trust_env=False)
            _client_pid = pid
        return _client


def close_client() -> None:
    """Close the process's pooled client (and its connections); the next call makes a new one."""
    global _client, _client_pid
    with _client_lock:
        client, _client, _client_pid = _client, None, None
    if client is not None:
        client.close()


def call_http(
    *,
    method: str,
    url: str,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout_seconds: float = 10.0,
    idempotency_key: str | None = None,
    outbound: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Make one HTTP call and describe the outcome; never raises for call failures.

    Args:
        method: HTTP method, any case.
        url: absolute ``http(s)`` URL.
        json_body: sent as JSON for methods other than GET and HEAD (which send no
            body; the value is ignored). ``None`` sends no body.
        headers: extra request headers.
        timeout_seconds: seconds allowed for each phase (connect, send, each read,
            waiting for a pooled connection) -- not a total deadline.
        idempotency_key: sent as the ``Idempotency-Key`` header (replacing any given
            in ``headers``).
        outbound: set for an ``http`` step's URL, which is not trusted configuration:
            ``{"policy": EgressPolicy, "expected_status": [...]}``; the call then goes
            through :func:`actors.http_step.call_url` (egress guard, redirects, expected
            statuses) and answers in the same shape.

    Returns:
        On a 2xx answer::

            {"ok": True, "status": 200, "body": <parsed JSON | text | None if empty>,
             "elapsed_ms": 12.3}

        Otherwise::

            {"ok": False, "elapsed_ms": 12.3, "error": {
                "kind": "http_status" | "timeout" | "connection" | "invalid_request",
                "message": "HTTP 503 from POST http://...",   # one line, no header values
                "status": 503 | None,
                "retryable": bool,       # 5xx, 408, 429, timeouts, connection failures
                "body_excerpt": str | None,   # first 500 chars of the answer
                "retry_after_s": float | None}}  # from Retry-After (seconds or date)
    """
    if outbound is not None:
        from actors.http_step import call_url  # imported here: http_step imports this module

        return call_url(
            method=method, url=url, json_body=json_body, headers=headers, timeout_seconds=timeout_seconds,
            idempotency_key=idempotency_key, **outbound,
        )
    started = time.perf_counter()
    verb = method.upper() if isinstance(method, str) else ""
    where = " ".join(f"{verb or repr(method)} {_safe_url(url)}".split())  # messages stay one line
    secrets = _secret_values(headers, idempotency_key)
    try:
        if not verb or not verb.isalpha():
            raise _Invalid(f"invalid HTTP method {method!r}")
        request_headers = _build_headers(headers, idempotency_key)
        content = None
        if json_body is not None and verb not in _NO_BODY_METHODS:
            content = _encode_json(json_body)
            request_headers.setdefault("Content-Type", "application/json")
        if not isinstance(timeout_seconds, (int, float)) or isinstance(timeout_seconds, bool) or not timeout_seconds > 0:
            raise _Invalid(f"timeout_seconds must be a positive number, got {timeout_seconds!r}")
        response = _get_client().request(
            verb,
            url,
            content=content,
            headers=request_headers,
            timeout=httpx.Timeout(float(timeout_seconds)),
        )
    except Exception as exc:  # noqa: BLE001 - the contract is: never raise for a call
        return _call_failure(exc, started, where, secrets, timeout_seconds)

    if 200 <= response.status_code < 300:
        return {"ok": True, "status": response.status_code, "body": _parse_body(response), "elapsed_ms": _ms(started)}
    return _status_failure(started, response, f"HTTP {response.status_code} from {where}")


def _status_failure(started: float, response: httpx.Response, message: str) -> dict[str, Any]:
    """The typed ``http_status`` failure of an answer that is not a success (shared with http steps).

    Retryable for 5xx, 408 and 429; carries the status, a body excerpt and ``Retry-After``.
    """
    status = response.status_code
    return _failure(
        started,
        "http_status",
        message,
        retryable=status >= 500 or status in RETRYABLE_STATUSES,
        status=status,
        body_excerpt=response.text[:BODY_EXCERPT_CHARS],
        retry_after_s=_retry_after(response.headers.get("retry-after")),
    )


class _Invalid(Exception):
    """An argument rejected before any request is made; its text is safe to show."""


def _call_failure(exc: Exception, started: float, where: str, secrets: list[str], timeout_seconds: Any) -> dict[str, Any]:
    """The typed failure of a call that raised ``exc`` (shared by service calls and http steps).

    Kinds: ``timeout`` and ``connection`` (retryable; an undecodable answer is not),
    ``invalid_request`` (not retryable). Messages are one line, with ``secrets`` masked.
    """
    if isinstance(exc, httpx.TimeoutException):
        return _failure(started, "timeout", f"timed out after {float(timeout_seconds)} s calling {where}", retryable=True)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError)):
        # LocalProtocolError can quote an illegal header value: name only the class.
        detail = type(exc).__name__ if isinstance(exc, httpx.LocalProtocolError) else _one_line(exc, secrets)
        return _failure(started, "invalid_request", f"invalid request {where}: {detail}", retryable=False)
    if isinstance(exc, httpx.TransportError):
        # Connect errors (refused, DNS), resets, a server that closed without answering.
        message = f"connection failed calling {where}: {type(exc).__name__}: {_one_line(exc, secrets)}"
        return _failure(started, "connection", message, retryable=True)
    if isinstance(exc, httpx.DecodingError):
        message = f"could not decode the answer from {where}: {_one_line(exc, secrets)}"
        return _failure(started, "connection", message, retryable=False)
    if isinstance(exc, _Invalid):
        return _failure(started, "invalid_request", f"invalid request {where}: {exc}", retryable=False)
    # Unknown origin: the text might quote a header, so only the class is shown.
    return _failure(started, "invalid_request", f"invalid request {where}: {type(exc).__name__}", retryable=False)


def _build_headers(headers: Mapping[str, str] | None, idempotency_key: str | None) -> httpx.Headers:
    """Request headers, checked here so no exception text can quote a value."""
    built = httpx.Headers()
    items = list((headers or {}).items())
    if idempotency_key is not None:
        items = [(k, v) for k, v in items if str(k).lower() != "idempotency-key"]
        items.append(("Idempotency-Key", idempotency_key))
    for name, value in items:
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise _Invalid(f"header name {str(name)[:40]!r} is not a valid HTTP token")
        if name.lower() in RESERVED_HEADERS:
            raise _Invalid(f"header {name} is set by the HTTP client, not by a step")
        if not isinstance(value, str):
            raise _Invalid(f"header {name} must have a string value, not {type(value).__name__}")
        if not value.isascii() or any(c in value for c in "\r\n\0"):
            raise _Invalid(f"header {name} has a value with non-ASCII or control characters")
        built[name] = value
    return built


def _encode_json(body: Any) -> bytes:
    try:
        # Same encoding httpx's json= uses, but done here so the error is ours to word.
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Invalid(f"json_body cannot be encoded as JSON: {type(exc).__name__}: {_one_line(exc, [])}") from None


def _failure(
    started: float,
    kind: str,
    message: str,
    *,
    retryable: bool,
    status: int | None = None,
    body_excerpt: str | None = None,
    retry_after_s: float | None = None,
) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "kind": kind,
            "message": message,
            "status": status,
            "retryable": retryable,
            "body_excerpt": body_excerpt,
            "retry_after_s": retry_after_s,
        },
        "elapsed_ms": _ms(started),
    }


def _parse_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        return response.text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _safe_url(url: Any) -> str:
    """The URL without user-info (``user:password@``), for messages."""
    if not isinstance(url, str):
        return repr(url)
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            host = parts.netloc.rsplit("@", 1)[1]
            return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"
    return url


def _secret_values(headers: Mapping[str, str] | None, key: str | None) -> list[str]:
    values = [str(v) for v in (headers or {}).values()] + ([key] if key else [])
    # Very short values would blank out ordinary words; they are not credentials anyway.
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def _one_line(exc: BaseException, secrets: list[str]) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
