"""One outbound step attempt as its worker does it: secrets in, the call, secrets masked out.

:func:`perform_call` is what a worker runs for a ``service_call``, ``http`` or ``webhook``
attempt (in a Ray worker: a shared host's service caller, :class:`actors.callers.ServiceCaller`,
or the Ray task :func:`actors.tasks.service_call_task`; without Ray,
:class:`actors.runners.ThreadStepRunner`). It is the only code that turns the secret
markers of :mod:`dsl.secrets` into values, and it masks every value it wrote in out of
what it returns, so the engine records and logs no secret (``docs/security.md``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from actors.http_call import call_http
from actors.secrets import SecretResolver, redact, secret_failure
from actors.webhooks import check_webhook_url, encode_body, signature_headers
from dsl.errors import ConfigurationError, SecretNotFoundError
from dsl.secrets import SecretRef

__all__ = ["perform_call"]


def perform_call(
    call: Mapping[str, Any],
    *,
    secrets_file: str | None = None,
    webhook: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Make one step attempt's HTTP call; never raises for the call's failure.

    Args:
        call: keyword arguments of :func:`actors.http_call.call_http` (``method``,
            ``url``, ``json_body``, ``headers``, ``timeout_seconds``,
            ``idempotency_key``); ``url``, header values and the body may hold secret
            markers.
        secrets_file: the secrets file (``Settings.secrets_file``), or None.
        webhook: ``{"signing_secret": NAME}`` for a ``webhook`` step: the body is signed
            (:mod:`actors.webhooks`); ``call["outbound"]`` holds the egress policy.
        environ: environment to read ``CORTX_SECRET_*`` from (this process's by default).

    Returns:
        :func:`~actors.http_call.call_http`'s result with every secret written in masked
        as ``***`` (error message, body excerpt, response body). A secret without a value
        gives ``{"ok": False, "error": {"kind": "secret_missing", "retryable": False,
        "message": "secret 'X' is not set (looked in: ...)"}}``; a webhook URL that is not
        an http(s) URL with a host gives kind ``invalid_request``, one the egress guard
        refuses kind ``egress_refused`` (both not retryable).
    """
    resolver = SecretResolver(secrets_file=secrets_file, environ=environ)
    try:
        url = resolver.text_of(call["url"], url=True)
        headers = {k: resolver.text_of(v) for k, v in (call.get("headers") or {}).items()}
        body = resolver.reveal(call.get("json_body"))
        if webhook is not None:
            signing_secret = resolver.value_of(SecretRef(str(webhook["signing_secret"])))
    except (SecretNotFoundError, ConfigurationError) as exc:
        return secret_failure(exc)
    masked = resolver.masked()
    kwargs = {**call, "url": url, "headers": headers, "json_body": body}
    if webhook is not None:
        refused = check_webhook_url(url)
        if refused is not None:
            return redact(_refused(url, refused), masked)
        try:
            content = b"" if body is None else encode_body(body)  # None: no body is sent
            signed = signature_headers(signing_secret, str(call.get("idempotency_key") or ""), int(time.time()), content)
        except (TypeError, ValueError) as exc:
            return redact(_refused(url, f"cannot sign the delivery: {exc}", kind="invalid_request"), masked)
        kwargs["headers"] = {**headers, **signed}
    return redact(call_http(**kwargs), masked)


def _refused(url: str, reason: str, *, kind: str = "invalid_request") -> dict[str, Any]:
    try:
        host = urlsplit(url).hostname or "?"
    except ValueError:
        host = "?"
    return {
        "ok": False,
        "error": {
            "kind": kind,
            "message": f"webhook to host {host} not sent: {reason}",
            "status": None,
            "retryable": False,
            "body_excerpt": None,
            "retry_after_s": None,
        },
        "elapsed_ms": 0.0,
    }
