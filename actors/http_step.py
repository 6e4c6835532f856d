"""The HTTP work of an ``http`` step: a guarded call to a URL from a pack, its outcome as data.

:func:`call_url` is the ``http`` step's counterpart of :func:`actors.http_call.call_http`
and answers in the same shape, with the same error kinds (``http_status``, ``timeout``,
``connection``, ``invalid_request``) and the same ``retryable`` rules, so retry policies and
fallbacks treat both step types alike. What it adds (FDD §2.4 "External APIs"):

* the egress guard (:mod:`actors.egress`): every URL, the first and each redirect hop, is
  checked before it is requested, and every connection is checked after DNS; a refusal is
  kind ``egress_refused``, never retryable, with ``host`` and ``rule``;
* ``expected_status``: which statuses count as success (default ``2xx``); any other is an
  ``http_status`` error;
* redirects followed by hand (301, 302, 303, 307, 308), at most ``policy.max_redirects``
  hops, unless the redirect's status is itself expected; 303 (and 301/302 after a POST)
  continue as GET without a body; a hop to another origin drops ``Authorization``,
  ``Proxy-Authorization`` and ``Cookie``. Too many hops: kind ``too_many_redirects``.
* the answer's status and a subset of its headers (:data:`KEPT_RESPONSE_HEADERS`) besides the
  body.

It uses the guarded pooled client of :func:`actors.egress.guarded_client`, not
``call_http``'s: a connection opened for a trusted service must never carry an unchecked URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from actors.call_plan import CallPlan
from actors.egress import EgressPolicy, EgressRefusedError, check_url, guarded_client
from actors.http_call import (
    _build_headers,
    _call_failure,
    _encode_json,
    _failure,
    _Invalid,
    _ms,
    _parse_body,
    _safe_url,
    _secret_values,
    _status_failure,
)
from dsl.errors import ConfigurationError
from dsl.http_spec import DEFAULT_EXPECTED_STATUS, METHODS_WITHOUT_BODY, status_matches
from dsl.models import HttpStep

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "KEPT_RESPONSE_HEADERS",
    "REDIRECT_STATUSES",
    "call_url",
    "http_outbound",
    "http_result",
    "plan_http_call",
    "url_with_query",
]

DEFAULT_TIMEOUT_SECONDS = 10.0
"""Per-phase timeout of an ``http`` step without ``timeout_seconds``, in s."""

KEPT_RESPONSE_HEADERS = frozenset(
    {
        "cache-control", "content-language", "content-length", "content-type", "date", "etag",
        "expires", "last-modified", "link", "location", "retry-after", "x-request-id",
    }
)
"""Response headers kept in the step's result (plus ``ratelimit*`` and ``x-ratelimit-*``).
Others (``set-cookie`` above all) are left out: results are stored in checkpoints."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")


def plan_http_call(step: HttpStep, render: Callable[[str], Any]) -> CallPlan:
    """The call of one ``http`` step execution: templates rendered, query appended.

    Args:
        step: the step.
        render: renders one of the step's templated fields by name (the scheduler's).

    Returns:
        The :class:`~actors.call_plan.CallPlan`; whether the URL may be called is decided
        by the step task (:func:`call_url`), on every attempt and redirect hop.

    Raises:
        ExpressionError: a template failed to render.
        ConfigurationError: the URL is not text or a query value is not a scalar or list.
    """
    url = url_with_query(render("url"), render("query") if step.query else None)
    headers = dict(render("headers")) if step.headers else {}
    body = render("body") if step.body is not None else None
    return CallPlan(step.method, url, headers, body, step.timeout_seconds or DEFAULT_TIMEOUT_SECONDS)


def http_outbound(step: HttpStep, policy: EgressPolicy) -> dict[str, Any]:
    """The ``outbound`` argument of :func:`actors.http_call.call_http` for ``step``."""
    return {"policy": policy, "expected_status": list(step.expected_status)}


def http_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """An ``http`` step's raw ``result`` from a successful call: ``{"status", "headers", "body"}``."""
    return {"status": result.get("status"), "headers": dict(result.get("headers") or {}), "body": result.get("body")}


def url_with_query(url: str, query: Mapping[str, Any] | None) -> str:
    """``url`` with ``query`` appended (after any query it has); ``None`` values are left out.

    Values: strings, numbers, booleans (``true``/``false``) or lists of them (the parameter
    repeats).

    Raises:
        ConfigurationError: ``url`` is not a URL, or a value is an object or nested list;
            the name is ``query.<parameter>``.
    """
    if not isinstance(url, str):
        raise ConfigurationError("url", type(url).__name__, "must render to a string URL")
    pairs: list[tuple[str, str]] = []
    for name, value in (query or {}).items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, bool):
                pairs.append((name, "true" if item else "false"))
            elif isinstance(item, (str, int, float)):
                pairs.append((name, str(item)))
            else:
                raise ConfigurationError(
                    f"query.{name}", type(item).__name__, "must be a string, number, boolean, null or a list of them"
                )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ConfigurationError("url", _safe_url(url), f"is not a URL: {exc}") from None
    if pairs:
        parsed = parsed.copy_with(params=httpx.QueryParams(list(parsed.params.multi_items()) + pairs))
    return str(parsed)


def call_url(
    *,
    method: str,
    url: str,
    policy: EgressPolicy,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout_seconds: float = 10.0,
    idempotency_key: str | None = None,
    expected_status: Sequence[int | str] = DEFAULT_EXPECTED_STATUS,
) -> dict[str, Any]:
    """Call a URL from a pack through the egress guard; never raises for call failures.

    Args:
        method: HTTP method, any case.
        url: absolute ``http(s)`` URL (query already appended, see :func:`url_with_query`).
        policy: the allowlist, ``allow_private`` and the redirect bound.
        json_body: sent as JSON except with GET and HEAD; ``None`` sends no body.
        headers: request headers (``traceparent`` among them when the engine calls).
        timeout_seconds: seconds per phase of each hop (connect, send, each read).
        idempotency_key: sent as ``Idempotency-Key`` on every hop.
        expected_status: statuses that count as success (``dsl.http_spec`` forms).

    Returns:
        On an expected status::

            {"ok": True, "status": 200, "headers": {"content-type": ...}, "body": <JSON | text | None>,
             "url": <final URL>, "redirects": 0, "elapsed_ms": 12.3}

        Otherwise ``{"ok": False, "error": {...}, "elapsed_ms"}`` as ``call_http`` gives it,
        with kinds ``http_status``, ``timeout``, ``connection``, ``invalid_request``, and
        ``egress_refused`` (plus ``host`` and ``rule``) or ``too_many_redirects``.
    """
    started = time.perf_counter()
    verb = method.upper() if isinstance(method, str) else ""
    secrets = _secret_values(headers, idempotency_key)
    current = url
    where = _where(verb or repr(method), current)
    try:
        if not verb or not verb.isalpha():
            raise _Invalid(f"invalid HTTP method {method!r}")
        if not isinstance(timeout_seconds, (int, float)) or isinstance(timeout_seconds, bool) or not timeout_seconds > 0:
            raise _Invalid(f"timeout_seconds must be a positive number, got {timeout_seconds!r}")
        request_headers = _build_headers(headers, idempotency_key)
        content = None
        if json_body is not None and verb not in METHODS_WITHOUT_BODY:
            content = _encode_json(json_body)
            request_headers.setdefault("Content-Type", "application/json")
        client = guarded_client(policy)
        for hop in range(policy.max_redirects + 1):
            where = _where(verb, current)
            check_url(current, policy)
            response = client.request(
                verb, current, content=content, headers=request_headers, timeout=httpx.Timeout(float(timeout_seconds))
            )
            status = response.status_code
            location = response.headers.get("location")
            if status in REDIRECT_STATUSES and location and not status_matches(status, expected_status):
                if hop == policy.max_redirects:
                    message = f"more than {policy.max_redirects} redirects calling {_where(verb, url)}"
                    return _failure(started, "too_many_redirects", message, retryable=False, status=status)
                target = response.url.join(location)
                if status == 303 or (status in (301, 302) and verb == "POST"):
                    verb, content = ("GET" if verb != "HEAD" else "HEAD"), None
                    for name in ("content-type", "content-length"):
                        request_headers.pop(name, None)
                if (target.scheme, target.host, target.port) != (response.url.scheme, response.url.host, response.url.port):
                    for name in _CREDENTIAL_HEADERS:
                        request_headers.pop(name, None)
                current = str(target)
                continue
            break
    except EgressRefusedError as exc:
        refused = exc if exc.url else exc.with_url(_safe_url(current))
        result = _failure(started, "egress_refused", refused.message(), retryable=False)
        result["error"].update(host=refused.host, rule=refused.rule)
        return result
    except Exception as exc:  # noqa: BLE001 - the contract is: never raise for a call
        return _call_failure(exc, started, where, secrets, timeout_seconds)

    if status_matches(status, expected_status):
        return {
            "ok": True,
            "status": status,
            "headers": _kept_headers(response.headers),
            "body": _parse_body(response),
            "url": _safe_url(current),
            "redirects": hop,
            "elapsed_ms": _ms(started),
        }
    return _status_failure(
        started, response, f"HTTP {status} from {where} (expected {', '.join(map(str, expected_status))})"
    )


def _where(verb: str, url: str) -> str:
    return " ".join(f"{verb} {_safe_url(url)}".split())


def _kept_headers(headers: httpx.Headers) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in KEPT_RESPONSE_HEADERS or lowered.startswith(("ratelimit", "x-ratelimit-")):
            kept[lowered] = value if lowered not in kept else f"{kept[lowered]}, {value}"
    return kept
