"""Bearer API keys with scopes, and the API's own settings (keys, limits, timeouts).

Key format (``CORTX_API_KEYS``): entries separated by ``;`` (or new lines), each
``<key>:<scope>[,<scope>...]``::

    CORTX_API_KEYS="k-designer-7Qx2...:deploy,read;k-gateway-Zt9p...:execute,read;k-ops-...:admin"

* a key is 16 to 512 printable ASCII characters without spaces, ``:`` or ``;``;
* scopes: ``execute`` (start and cancel runs), ``read`` (status, steps, packs),
  ``deploy`` (deploy and deprecate packs), ``admin`` (every scope);
* an entry without scopes, an unknown scope, a short key or a repeated key is a
  :class:`~dsl.errors.ConfigurationError` naming ``CORTX_API_KEYS`` (never the key).

Only the SHA-256 digest of each key is kept (:class:`ApiKeyring`), so the keyring can be
shipped to Serve replicas without the secrets. A presented key is hashed and compared with
**every** configured digest using :func:`hmac.compare_digest` (constant time, no early exit).
Keys are never logged; a key is identified in logs and idempotency scopes by
:attr:`ApiKey.fingerprint` (first 12 hex characters of its digest).

No keys configured = development mode: no authentication; ``cortx-workflow serve`` then
refuses to bind anything but a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from actors.settings import parse_decimal, parse_whole
from dsl.errors import ConfigurationError
from serve_app.errors import AuthenticationError, ForbiddenError

__all__ = ["ADMIN", "SCOPES", "ApiKey", "ApiKeyring", "ApiSettings", "Principal", "is_loopback"]

SCOPES: Final = frozenset({"execute", "read", "deploy", "admin"})
ADMIN: Final = "admin"
_KEY = re.compile(r"^[\x21-\x7e]{16,512}$")
_ENV_KEYS: Final = "CORTX_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its SHA-256 digest and scopes (never the key itself)."""

    digest: bytes
    scopes: frozenset[str]

    @property
    def fingerprint(self) -> str:
        """A short, non-secret identifier for logs and idempotency scopes."""
        return self.digest.hex()[:12]

    def allows(self, scope: str) -> bool:
        """True when the key has ``scope`` or ``admin``."""
        return scope in self.scopes or ADMIN in self.scopes


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``anonymous`` in development mode, else ``key:<fingerprint>``."""

    name: str
    key: ApiKey | None = None


ANONYMOUS: Final = Principal("anonymous")


@dataclass(frozen=True)
class ApiKeyring:
    """The configured keys. Empty = development mode (no authentication)."""

    keys: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured."""
        return bool(self.keys)

    @classmethod
    def parse(cls, text: str | None, name: str = _ENV_KEYS) -> ApiKeyring:
        """Parse the ``CORTX_API_KEYS`` format (see the module docstring).

        Raises:
            ConfigurationError: a malformed entry; the message names the entry's position,
                never the key.
        """
        keys: list[ApiKey] = []
        seen: set[bytes] = set()
        entries = [e.strip() for e in re.split(r"[;\n]", text or "") if e.strip()]
        for index, entry in enumerate(entries, 1):
            secret, sep, scope_text = entry.rpartition(":")
            where = f"entry {index} of {len(entries)}"
            if not sep or not secret:
                raise ConfigurationError(name, f"<{where}>", "each entry must be <key>:<scope>[,<scope>...]")
            if not _KEY.match(secret) or ":" in secret or ";" in secret:
                raise ConfigurationError(
                    name, f"<{where}>", "a key must be 16 to 512 printable ASCII characters without spaces, ':' or ';'"
                )
            scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
            unknown = scopes - SCOPES
            if not scopes or unknown:
                raise ConfigurationError(
                    name, f"<{where}>", f"scopes must be a non-empty list of {', '.join(sorted(SCOPES))}"
                    + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
                )
            digest = _digest(secret)
            if digest in seen:
                raise ConfigurationError(name, f"<{where}>", "the same key is listed twice")
            seen.add(digest)
            keys.append(ApiKey(digest, scopes))
        return cls(tuple(keys))

    @classmethod
    def coerce(cls, value: ApiKeyring | str | Mapping[str, Iterable[str]] | None) -> ApiKeyring:
        """A keyring from a keyring, the env format, a ``{key: scopes}`` mapping, or None (no keys)."""
        if value is None:
            return cls()
        if isinstance(value, ApiKeyring):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.parse(";".join(f"{k}:{','.join(v)}" for k, v in value.items()), "api_keys")

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value.

        Raises:
            AuthenticationError: keys are configured and the header is missing, not
                ``Bearer <key>``, or names no configured key.
        """
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise AuthenticationError("missing")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("missing")
        presented = _digest(token.strip())
        match: ApiKey | None = None
        for key in self.keys:  # every digest is compared: the time does not say which matched
            if hmac.compare_digest(presented, key.digest):
                match = key
        if match is None:
            raise AuthenticationError("invalid")
        return Principal(f"key:{match.fingerprint}", match)

    def authorize(self, principal: Principal, scope: str | None) -> None:
        """Check that ``principal`` may use an endpoint needing ``scope`` (None: any valid key).

        Raises:
            ForbiddenError: the key lacks the scope.
        """
        if not self.enabled or scope is None:
            return
        assert principal.key is not None
        if not principal.key.allows(scope):
            raise ForbiddenError(scope)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API's own settings (the engine's are :class:`actors.settings.Settings`).

    ==================================  =========  ==============================================
    variable                            default    meaning
    ==================================  =========  ==============================================
    ``CORTX_API_KEYS``                  (none)     bearer keys and scopes; none = development mode
    ``CORTX_API_MAX_BODY_BYTES``        1048576    largest request body; larger answers 413
    ``CORTX_API_ENGINE_TIMEOUT_SECONDS`` 30        longest wait for Ray / a host before 503
    ``CORTX_API_BODY_TIMEOUT_SECONDS``   10        longest wait for a whole request body; 408
    ``CORTX_API_MAX_EVENT_STREAMS``      100       open event streams per replica; more get 503
    ==================================  =========  ==============================================

    The last two keep a replica's request slots (Serve's ``max_ongoing_requests``, 200 in
    serve_app/deployment.py) from all being held by slow bodies or open streams; keep the
    stream cap well below ``max_ongoing_requests`` (docs/api.md, "Open requests per replica").
    """

    keyring: ApiKeyring = field(default_factory=ApiKeyring)
    max_body_bytes: int = 1_048_576
    engine_timeout_s: float = 30.0
    body_timeout_s: float = 10.0
    max_event_streams: int = 100

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Read the variables above.

        Raises:
            ConfigurationError: a malformed value (keys are never echoed).
        """
        env = os.environ if environ is None else environ
        return cls(
            keyring=ApiKeyring.parse(env.get(_ENV_KEYS)),
            max_body_bytes=_number(env, "CORTX_API_MAX_BODY_BYTES", parse_whole, 1_048_576, 1024, 64 * 1_048_576),
            engine_timeout_s=_number(env, "CORTX_API_ENGINE_TIMEOUT_SECONDS", parse_decimal, 30.0, 1.0, 600.0),
            body_timeout_s=_number(env, "CORTX_API_BODY_TIMEOUT_SECONDS", parse_decimal, 10.0, 0.5, 600.0),
            max_event_streams=_number(env, "CORTX_API_MAX_EVENT_STREAMS", parse_whole, 100, 1, 100_000),
        )


def _number(
    env: Mapping[str, str], name: str, parse: Callable[[str], Any], default: Any, low: Any, high: Any
) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "a whole number" if parse is parse_whole else "a number"
        raise ConfigurationError(name, raw, f"must be {kind} from {low} to {high}")
    return value
