"""Secret values: where they are read, how they are written into a call, how they are masked.

Only step tasks read values (``actors.outbound``, run by ``actors.tasks`` and
``actors.runners``): the ExecutionActor and the scheduler handle secrets as the markers of
:mod:`dsl.secrets` and never hold the value of a named secret. The ExecutionActor uses
:func:`redact` and :func:`masked_strings` too, to mask its run's secret input values in
what it records.

Where a named secret's value comes from (:func:`resolve_secret`), first match wins:

1. the environment variable ``CORTX_SECRET_<NAME>`` of the process running the step task
   (for Ray workers: the environment the cluster was started with, or a ``runtime_env``);
2. the secrets file: a YAML or JSON mapping ``{NAME: value}`` at the path given to the task
   (``Settings.secrets_file``, from ``CORTX_SECRETS_FILE``), else at ``CORTX_SECRETS_FILE``
   of the task's process. It is read at each step attempt, so a rotated value is picked up
   by the next attempt.

How a value is written in (:func:`reveal`): as text where the marker was part of a string;
as the value itself where a template was one whole ``${ }``; percent-encoded (every
reserved character) in URLs, so a value cannot change the URL's structure.

Masking (:func:`redact`): every string a step task returns (error messages, body excerpts,
response bodies) has each value it wrote in, and its percent-encoded form, replaced by
``***``. Values shorter than :data:`MIN_MASKED_LENGTH` characters are not masked (they
would blank out ordinary words); do not use such short secrets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from dsl.errors import ConfigurationError, SecretNotFoundError
from dsl.secrets import MASK, SecretRef, SecretText, SecretValue

__all__ = [
    "ENV_PREFIX",
    "MIN_MASKED_LENGTH",
    "SECRETS_FILE_ENV",
    "SecretResolver",
    "load_secrets_file",
    "masked_strings",
    "redact",
    "resolve_secret",
    "secret_failure",
]

ENV_PREFIX = "CORTX_SECRET_"
"""Environment variables ``CORTX_SECRET_<NAME>`` hold named secrets."""

SECRETS_FILE_ENV = "CORTX_SECRETS_FILE"
"""Environment variable naming the secrets file (YAML or JSON mapping)."""

MIN_MASKED_LENGTH = 4
"""Shortest secret value that :func:`redact` masks, in characters."""


def read_config_file(path: str | Path, setting: str, *, quote_parser: bool = True) -> Any:
    """Parse a configuration file: ``.json`` as JSON, anything else as (safe) YAML.

    Args:
        path: the file.
        setting: the variable that names it, for errors.
        quote_parser: include the parser's message (it may quote the file's text; never for
            a file of secrets).

    Raises:
        ConfigurationError: (``setting``, the path) the file cannot be read or parsed.
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(setting, where, f"cannot be read: {type(exc).__name__}") from None
    try:
        return json.loads(text) if where.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        detail = f": {exc}" if quote_parser else f" ({type(exc).__name__})"
        raise ConfigurationError(setting, where, f"is not valid YAML or JSON{detail}") from None


def load_secrets_file(path: str | Path) -> dict[str, str]:
    """Read a secrets file: a YAML or JSON mapping of secret name to string value.

    Args:
        path: the file (``.json`` is read as JSON, anything else as YAML).

    Returns:
        ``{name: value}``; numbers and booleans are turned into their text.

    Raises:
        ConfigurationError: the file cannot be read or parsed, is not a mapping, or a
            value is not a scalar. The error names the file and the key, never a value.
    """
    where = str(path)
    # The parser's message may quote the file's text: name only the error class.
    data = read_config_file(path, SECRETS_FILE_ENV, quote_parser=False)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(SECRETS_FILE_ENV, where, "must hold a mapping of secret name to value")
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise ConfigurationError(SECRETS_FILE_ENV, where, f"the value of {str(key)!r} must be text")
        out[str(key)] = str(value)
    return out


def resolve_secret(
    name: str, *, environ: Mapping[str, str] | None = None, secrets_file: str | Path | None = None
) -> str:
    """The value of the named secret (see the module docstring for the order of sources).

    Args:
        name: the secret's name, as in ``${ secrets.NAME }``.
        environ: the environment to read (this process's by default).
        secrets_file: the secrets file; ``CORTX_SECRETS_FILE`` of ``environ`` when None.

    Returns:
        The value.

    Raises:
        SecretNotFoundError: no source has it; the message names the secret and the
            places looked in.
        ConfigurationError: the secrets file is unreadable or malformed.
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV_PREFIX + name)
    if value is not None:
        return value
    path = secrets_file if secrets_file is not None else (env.get(SECRETS_FILE_ENV) or None)
    if path is not None:
        values = load_secrets_file(path)
        if name in values:
            return values[name]
    looked = f"environment variable {ENV_PREFIX}{name}"
    looked += f", secrets file {path}" if path is not None else f" (no {SECRETS_FILE_ENV} is set)"
    raise SecretNotFoundError(name, looked)


class SecretResolver:
    """Writes secrets into one step attempt's call and remembers what it wrote, for masking.

    Args:
        secrets_file: passed to :func:`resolve_secret`.
        environ: passed to :func:`resolve_secret`.
    """

    def __init__(self, *, secrets_file: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._secrets_file = secrets_file
        self._environ = environ
        self._named: dict[str, str] = {}
        self.revealed: list[str] = []

    def _remember(self, text: str) -> str:
        if text not in self.revealed:
            self.revealed.append(text)
        return text

    def value_of(self, marker: SecretRef | SecretValue) -> Any:
        """The value behind one marker (a named secret is read once per resolver)."""
        if isinstance(marker, SecretValue):
            value = marker.reveal()
            self._remember(value if isinstance(value, str) else json.dumps(value))
            return value
        if marker.name not in self._named:
            self._named[marker.name] = resolve_secret(
                marker.name, environ=self._environ, secrets_file=self._secrets_file
            )
        return self._remember(self._named[marker.name])

    def text_of(self, value: Any, *, url: bool = False) -> Any:
        """A marker or :class:`SecretText` as text (percent-encoded pieces when ``url``); others unchanged."""
        if isinstance(value, SecretText):
            return "".join(p if isinstance(p, str) else self._piece(p, url) for p in value.parts)
        if isinstance(value, (SecretRef, SecretValue)):
            return self._piece(value, url)
        return value

    def _piece(self, marker: SecretRef | SecretValue, url: bool) -> str:
        value = self.value_of(marker)
        text = value if isinstance(value, str) else json.dumps(value)
        if not url:
            return text
        if text in (".", ".."):
            # Would climb out of the service's base path, which the registry forbids.
            name = marker.name
            raise ConfigurationError("url", f"<secret {name}>", "a secret written into a URL may not be '.' or '..'")
        return quote(text, safe="")

    def reveal(self, value: Any) -> Any:
        """A copy of a rendered JSON value with every marker replaced by its value.

        A whole marker keeps its value's type (a secret number input stays a number);
        :class:`SecretText` becomes text.

        Raises:
            SecretNotFoundError, ConfigurationError: as :func:`resolve_secret`.
        """
        if isinstance(value, dict):
            return {k: self.reveal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.reveal(v) for v in value]
        if isinstance(value, (SecretRef, SecretValue)):
            return self.value_of(value)
        if isinstance(value, SecretText):
            return self.text_of(value)
        return value

    def masked(self) -> list[str]:
        """The strings :func:`redact` should mask: each value written, and its URL-encoded form."""
        return masked_strings(self.revealed)


def masked_strings(values: Any) -> list[str]:
    """What :func:`redact` masks for these secret values: each as text and URL-encoded.

    Args:
        values: an iterable of secret values (non-strings are taken as their JSON text).

    Returns:
        The strings of at least :data:`MIN_MASKED_LENGTH` characters, longest first.
    """
    out: set[str] = set()
    for value in values:
        for text in _leaf_texts(value):
            # as written, URL-encoded, JSON-escaped (an echoed JSON body), lower-cased (a host)
            out.update((text, quote(text, safe=""), json.dumps(text)[1:-1], text.lower()))
    return sorted((t for t in out if len(t) >= MIN_MASKED_LENGTH), key=len, reverse=True)


def _leaf_texts(value: Any) -> list[str]:
    """The texts a secret value can reappear as: itself, or each leaf of an object or list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _leaf_texts(item)] + [json.dumps(value)]
    if isinstance(value, list):
        return [text for item in value for text in _leaf_texts(item)] + [json.dumps(value)]
    return [json.dumps(value)]


def _mask_cut_tail(text: str, secret: str) -> str:
    """Mask what is left of ``secret`` at the end of ``text`` after a length limit cut it.

    Messages and body excerpts are cut to a fixed length; a secret cut there is no longer
    found whole, yet all but its last characters would be readable.
    """
    core = text.rstrip(".… ")
    for k in range(len(secret) - 1, MIN_MASKED_LENGTH - 1, -1):
        if core.endswith(secret[:k]):
            return core[:-k] + MASK + text[len(core):]
    return text


def redact(value: Any, secrets: list[str]) -> Any:
    """A copy of a JSON value with every occurrence of each secret in its strings replaced by ``***``.

    Args:
        value: any JSON value (dict keys are masked too).
        secrets: the strings to mask, longest first (see :meth:`SecretResolver.masked`).
    """
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
            value = _mask_cut_tail(value, secret)
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and json.dumps(value) in secrets:
        return MASK  # a secret number echoed back as a number
    return value


def secret_failure(exc: SecretNotFoundError | ConfigurationError) -> dict[str, Any]:
    """The step-attempt result for a secret that could not be read: not retryable.

    ``kind`` is ``secret_missing`` for a missing value, ``configuration`` for a broken
    secrets file.
    """
    kind = "secret_missing" if isinstance(exc, SecretNotFoundError) else "configuration"
    return {
        "ok": False,
        "error": {
            "kind": kind,
            "message": str(exc),
            "status": None,
            "retryable": False,
            "body_excerpt": None,
            "retry_after_s": None,
        },
        "elapsed_ms": 0.0,
    }
