"""Signing of ``webhook`` step deliveries, in the Standard Webhooks style (FDD §2.4 "Webhooks").

Every delivery is a ``POST`` of the rendered ``body`` as compact JSON with three headers:

* ``webhook-id``: ``msg_`` + the first 32 hex digits of the SHA-256 of the step's
  idempotency key (``<execution_id>/<step_key>``). The same on every retry and every
  resume of one step execution, so a receiver can deduplicate; different for each step
  execution (each loop iteration has its own step key).
* ``webhook-timestamp``: Unix seconds at the attempt (each attempt signs anew).
* ``webhook-signature``: ``v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``,
  where ``body`` is the exact bytes sent. ``key`` is the signing secret: for a value of
  the form ``whsec_<base64>`` (the Standard Webhooks format) the decoded bytes, for any
  other value its UTF-8 bytes.

The signing secret is a named secret (``signing_secret: NAME``), read in the step task like
``${ secrets.NAME }``; the engine never sees it.

A webhook URL comes from the pack, so it is not trusted configuration: a delivery goes
through the egress guard of the ``http`` step (:mod:`actors.egress`: the host allowlist
``CORTX_HTTP_ALLOWED_HOSTS``, private and link-local addresses refused, every connection
checked after DNS). :func:`webhook_outbound` is that single call site: the scheduler passes
its result as the call's ``outbound``, so :func:`actors.http_call.call_http` sends the
delivery through :func:`actors.http_step.call_url`. Redirects are not followed (a
redirect answer fails the attempt), and only a 2xx answer counts as delivered. A refused
URL fails the step at once (kind ``egress_refused``, not retried).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from actors.egress import EgressPolicy

__all__ = ["check_webhook_url", "encode_body", "sign", "signature_headers", "webhook_id", "webhook_outbound"]


def webhook_id(idempotency_key: str) -> str:
    """The ``webhook-id`` of a step execution: ``msg_`` + 32 hex digits, stable across retries.

    Args:
        idempotency_key: ``<execution_id>/<step_key>``.
    """
    return "msg_" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]


def encode_body(body: Any) -> bytes:
    """The bytes a webhook sends and signs: compact JSON, UTF-8, non-ASCII kept.

    The same encoding :func:`actors.http_call.call_http` uses for ``json_body``, so the
    signed bytes are the bytes on the wire (a test verifies the signature at a receiver).

    Raises:
        ValueError: NaN or infinite numbers. TypeError: values JSON cannot hold.
    """
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the signing secret starts with whsec_ but the rest is not base64") from None
    return secret.encode("utf-8")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

    Args:
        secret: the signing secret (``whsec_<base64>`` or any text).
        message_id: the ``webhook-id``.
        timestamp: Unix seconds, the ``webhook-timestamp``.
        body: the exact request body bytes.

    Raises:
        ValueError: a ``whsec_`` secret whose rest is not base64.
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret: str, idempotency_key: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    message_id = webhook_id(idempotency_key)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def webhook_outbound(policy: EgressPolicy) -> dict[str, Any]:
    """The ``outbound`` argument of :func:`actors.http_call.call_http` for a webhook delivery.

    Args:
        policy: the deployment's egress policy (``EgressPolicy.from_settings``).

    Returns:
        ``{"policy": <policy with max_redirects 0>, "expected_status": ["2xx"]}``.
    """
    return {"policy": replace(policy, max_redirects=0), "expected_status": ["2xx"]}


def check_webhook_url(url: str) -> str | None:
    """Why a webhook may not be sent to ``url`` (its form), or None when it may.

    Checked in the step task once secrets are written in, before signing: scheme ``http``
    or ``https``, a host, no user-info. Which hosts may be reached is the egress guard's
    rule, applied when the delivery is sent (:func:`webhook_outbound`).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the URL cannot be parsed"
    if parts.scheme not in ("http", "https"):
        return f"the URL scheme must be http or https, not {parts.scheme!r}"
    if not parts.hostname:
        return "the URL has no host"
    if "@" in parts.netloc:
        return "the URL may not carry user-info (user:password@); send credentials in a header"
    return None
