"""Rules of the ``http`` step that need no network: methods, expected statuses, the URL's form.

The ``http`` step (:class:`dsl.models.HttpStep`, FDD §2.4 "External APIs", §4.1) calls a
URL the pack names. This module holds what both the pack validator and the engine need to
agree on:

* :data:`HTTP_METHODS`, the methods a step may use;
* ``expected_status`` entries: an integer status (``404``), a class (``"2xx"``) or an
  inclusive range (``"200-299"``); :func:`parse_status_spec` turns one into a
  ``(low, high)`` pair and :func:`status_matches` tests a status against a list;
* :func:`url_form_problem`, the static check of a URL template (scheme and host, when the
  template's beginning fixes them).

Whether a URL may be *called* (the host allowlist, private addresses) is decided at run time
by ``actors.egress``; a pack cannot know the deployment's allowlist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_EXPECTED_STATUS",
    "HTTP_METHODS",
    "METHODS_WITHOUT_BODY",
    "RESERVED_HEADERS",
    "parse_status_spec",
    "status_matches",
    "url_form_problem",
]

HTTP_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
"""Methods an ``http`` step may use (RFC 9110 §9, less CONNECT and TRACE)."""

METHODS_WITHOUT_BODY: frozenset[str] = frozenset({"GET", "HEAD"})
"""Methods that send no request body (as in ``actors.http_call``)."""

RESERVED_HEADERS: frozenset[str] = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "te", "trailer", "upgrade",
})
"""Request headers (lower-case) a pack may not set: the transport's own (RFC 9110 §7.2,
§7.6.1, RFC 9112 §6). ``Host`` above all: behind an allowed address it would reach another
virtual host than the one the egress allowlist checked."""

DEFAULT_EXPECTED_STATUS: tuple[str, ...] = ("2xx",)
"""Statuses that count as success when a step sets no ``expected_status``."""

_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)
_RANGE = re.compile(r"^(\d{3})\s*-\s*(\d{3})$")
_SINGLE = re.compile(r"^\d{3}$")


def parse_status_spec(item: Any) -> tuple[int, int]:
    """One ``expected_status`` entry as an inclusive ``(low, high)`` range of statuses.

    Args:
        item: ``404`` (int), ``"404"``, ``"4xx"`` (a class, any case) or ``"200-204"``.

    Returns:
        ``(low, high)`` with ``100 <= low <= high <= 599``.

    Raises:
        ValueError: a sentence naming the entry and the accepted forms.
    """
    if isinstance(item, bool):
        raise ValueError(f"{item!r} is not an HTTP status; use a number such as 200, a class such as '2xx' or a range")
    if isinstance(item, int):
        low = high = item
    elif isinstance(item, str):
        text = item.strip()
        if match := _CLASS.match(text):
            low = int(match.group(1)) * 100
            high = low + 99
        elif match := _RANGE.match(text):
            low, high = int(match.group(1)), int(match.group(2))
        elif _SINGLE.match(text):
            low = high = int(text)
        else:
            raise ValueError(
                f"{item!r} is not an HTTP status; use a number such as 200, a class such as '2xx' "
                "or a range such as '200-299'"
            )
    else:
        raise ValueError(f"an expected status must be a number or a string, not {type(item).__name__}")
    if not 100 <= low <= 599 or not 100 <= high <= 599:
        raise ValueError(f"{item!r}: HTTP statuses run from 100 to 599")
    if low > high:
        raise ValueError(f"{item!r}: the range's start is above its end")
    return low, high


def status_matches(status: int, specs: Iterable[Any]) -> bool:
    """Whether ``status`` is one of ``specs`` (entries as :func:`parse_status_spec` reads them).

    Raises:
        ValueError: an entry is malformed (validation refuses such packs before they run).
    """
    return any(low <= status <= high for low, high in map(parse_status_spec, specs))


def url_form_problem(url: str) -> str | None:
    """Why a URL template cannot be a valid ``http(s)`` URL, or None when it can.

    Only the part before the first ``${`` is judged, so ``"${ inputs.url }"`` passes here
    and is checked when rendered. A fixed beginning must be ``http://`` or ``https://``
    (or a prefix of one of them) and, when the host is fixed too, name one.

    Args:
        url: the step's ``url`` field, a template.

    Returns:
        One sentence, or None.
    """
    if url != url.strip():
        return "the URL has white space at its start or end"
    head = url.split("${", 1)[0]
    if not head:
        return None
    lowered = head.lower()
    if "://" not in lowered:
        if "http://".startswith(lowered) or "https://".startswith(lowered):
            return None  # e.g. "http${ ... }": decided when rendered
        return "the URL must start with http:// or https://"
    scheme = lowered.split("://", 1)[0]
    if scheme not in ("http", "https"):
        return f"the URL's scheme {scheme!r} is not http or https"
    if head == url:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            return f"the URL cannot be parsed: {exc}"
        if not parts.hostname:
            return "the URL names no host"
    elif any(c.isspace() for c in head):
        return "the URL contains white space"
    return None
