"""Where and what a work step sends, rendered in the scheduler with secrets still markers.

:func:`plan_call` turns a ``service_call`` or ``webhook`` step and a render function into a
:class:`CallPlan`: the method, URL, headers, body and timeout of its attempts. Secrets stay
the markers of :mod:`dsl.secrets` (the URL may be a :class:`~dsl.secrets.SecretText`); the
step task writes the values in (``actors.outbound``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.registry import ServiceRegistry
from dsl.errors import ConfigurationError
from dsl.models import ServiceCallStep, WebhookStep
from dsl.secrets import SecretRef, SecretText, SecretValue

__all__ = ["WEBHOOK_TIMEOUT_SECONDS", "CallPlan", "plan_call"]

WEBHOOK_TIMEOUT_SECONDS = 10.0
"""Per-phase HTTP timeout of a webhook delivery without ``timeout_seconds``, in s."""


@dataclass(frozen=True)
class CallPlan:
    """One work step's call, as the attempts send it.

    Attributes:
        method: upper-case HTTP method.
        url: absolute URL, text or :class:`~dsl.secrets.SecretText`.
        headers: static headers plus the step's rendered ones (values may be markers).
        body: the JSON body (may hold markers), or None.
        timeout_seconds: per-call timeout, in s.
        webhook: ``{"signing_secret": NAME}`` for a webhook, else None.
    """

    method: str
    url: str | SecretText
    headers: dict[str, Any]
    body: Any
    timeout_seconds: float
    webhook: dict[str, Any] | None = None


def _as_text(value: Any, field: str) -> str | SecretText:
    if isinstance(value, (SecretRef, SecretValue)):
        return SecretText((value,))
    if isinstance(value, (str, SecretText)):
        return value
    raise ConfigurationError(field, type(value).__name__, "must render to text")


def plan_call(
    step: ServiceCallStep | WebhookStep, render: Callable[[str], Any], registry: ServiceRegistry
) -> CallPlan:
    """The call of one step execution.

    Args:
        step: the step.
        render: renders one of the step's templated fields by name.
        registry: resolves ``service_call`` service names.

    Returns:
        The :class:`CallPlan`.

    Raises:
        ExpressionError: a template failed to render.
        ConfigurationError: unknown service, bad endpoint, or a URL that is not text.
    """
    headers = render("headers") if step.headers else {}
    if isinstance(step, WebhookStep):
        url = _as_text(render("url"), "url")
        return CallPlan(
            method="POST",
            url=url,
            headers=dict(headers),
            body=render("body"),
            timeout_seconds=step.timeout_seconds or WEBHOOK_TIMEOUT_SECONDS,
            webhook={"signing_secret": step.signing_secret},
        )
    body = render("inputs") if step.inputs else None
    endpoint = _as_text(render("endpoint"), "endpoint") if step.endpoint is not None else None
    if isinstance(endpoint, SecretText):
        # The registry joins and checks text: give it placeholders, then put the markers back.
        text, found = endpoint.with_placeholders()
        call = registry.resolve(step.service, text, step.method)
        url: str | SecretText = SecretText.from_placeholders(call.url, found)
    else:
        call = registry.resolve(step.service, endpoint, step.method)
        url = call.url
    if call.auth is not None:
        # The registry's secret header: a marker the step task fills in (never the value here).
        header, scheme, secret = call.auth
        headers = {**headers, header: SecretText.join([f"{scheme} " if scheme else "", SecretRef(secret)])}
    return CallPlan(call.method, url, {**call.headers, **headers}, body, call.timeout_seconds)
