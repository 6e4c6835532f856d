"""The service registry: where and how a ``service_call`` step reaches a named service.

Packs name services (``service: validation``), never URLs; the registry turns a name
plus an optional endpoint into a :class:`ResolvedCall`. It is pure Python (no Ray) and
picklable, because the orchestrator ships it to the actors that make the calls.

File format (YAML; ``examples/services.yaml`` configures the demo services)::

    services:
      validation:                                   # name: letters, digits, '_' or '-'
        base_url: http://127.0.0.1:8700/validation  # required, http or https
        endpoint: /v1/identity                      # default endpoint (optional)
        method: POST                                # default POST
        timeout_seconds: 10                         # default 10; > 0
        headers:                                    # static headers (optional)
          X-Client: cortx-workflow                  # values must be strings
        auth:                                       # a header whose value is a secret (optional)
          header: Authorization                     # default Authorization
          scheme: Bearer                            # optional prefix: "Bearer <value>"
          secret: VALIDATION_API_KEY                # read in the step task (CORTX_SECRET_<NAME>)
        retry:                                      # retry defaults for steps without their own
          max_attempts: 5                           # (the fields of on_error.retry)
          initial_delay_ms: 200
      compliance:
        base_url: http://127.0.0.1:8700/compliance

Unknown keys are errors (a typo must not silently fall back to a default). A
``services:`` key with no entries is an empty registry.

Environment overrides, applied by :meth:`ServiceRegistry.load`:
``CORTX_SERVICE_<NAME>_URL`` replaces the ``base_url`` of the service whose name,
upper-cased with ``-`` turned into ``_``, is ``NAME``; when no service matches, it
adds service ``<name>`` (``NAME`` lower-cased) with the defaults above. So
``CORTX_SERVICE_CREDIT_BUREAU_URL`` overrides a declared ``credit-bureau`` or
``credit_bureau``, or else adds ``credit_bureau``.

Every problem raises :class:`~dsl.errors.ConfigurationError` whose ``name`` is the
key path (``services.validation.timeout_seconds``) or the environment variable, and
whose message names the file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError as PydanticValidationError

from dsl.errors import ConfigurationError
from dsl.models import RetryPolicy
from dsl.secrets import SECRET_NAME_PATTERN

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_TIMEOUT_SECONDS",
    "ENV_PREFIX",
    "ResolvedCall",
    "ServiceEndpoint",
    "ServiceRegistry",
]

DEFAULT_METHOD = "POST"
DEFAULT_TIMEOUT_SECONDS = 10.0
ENV_PREFIX = "CORTX_SERVICE_"
ENV_SUFFIX = "_URL"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

_SERVICE_KEYS = frozenset({"base_url", "endpoint", "method", "timeout_seconds", "headers", "auth", "retry"})
_AUTH_KEYS = frozenset({"header", "scheme", "secret"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# RFC 9110 token characters; a header name outside them would be refused by the client later.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class ServiceEndpoint:
    """One configured service.

    Attributes:
        name: the service name packs use.
        base_url: ``http(s)://host[:port][/prefix]`` without a trailing slash.
        endpoint: default path appended to ``base_url`` when a step names none.
        method: default HTTP method, upper-case.
        timeout_seconds: per-call timeout in seconds (> 0).
        headers: static headers sent with every call.
        auth: ``(header, scheme or None, secret name)``: a header whose value is the
            named secret, read only in the step task (``docs/security.md``); or None.
        retry: the retry policy of steps that call this service and set none of their own
            (takes the place of ``DEFAULT_RETRY_COUNT``); or None.
    """

    name: str
    base_url: str
    endpoint: str | None
    method: str
    timeout_seconds: float
    headers: dict[str, str]
    auth: tuple[str, str | None, str] | None = None
    retry: RetryPolicy | None = None


@dataclass(frozen=True)
class ResolvedCall:
    """Everything needed to make one call.

    Attributes:
        service: the service name.
        url: absolute URL, ``base_url`` and endpoint joined with exactly one ``/``.
        method: upper-case HTTP method.
        timeout_seconds: per-call timeout in seconds.
        headers: static headers (a copy; safe to extend).
        auth: the service's secret header, as :attr:`ServiceEndpoint.auth`.
    """

    service: str
    url: str
    method: str
    timeout_seconds: float
    headers: dict[str, str]
    auth: tuple[str, str | None, str] | None = None


class ServiceRegistry:
    """Service names mapped to :class:`ServiceEndpoint`; immutable after construction.

    Args:
        services: the endpoints by name.
        source: where they came from (a file path or a label), used in messages.
    """

    def __init__(self, services: Mapping[str, ServiceEndpoint] | None = None, source: str = "<mapping>") -> None:
        self._services: dict[str, ServiceEndpoint] = dict(services or {})
        self.source = source

    # ------------------------------------------------------------------ building

    @classmethod
    def load(cls, path: str | Path | None, environ: Mapping[str, str] | None = None) -> ServiceRegistry:
        """Read a services file and apply ``CORTX_SERVICE_<NAME>_URL`` overrides.

        Args:
            path: the YAML file; ``None`` starts from an empty registry.
            environ: environment to read overrides from; ``None`` means ``os.environ``.

        Returns:
            The registry.

        Raises:
            ConfigurationError: the file is missing, unreadable, not YAML or invalid, or
                an override is not an http(s) URL.
        """
        if path is None:
            registry = cls({}, source="<no services file>")
        else:
            source = str(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError("services_file", source, f"cannot be read: {_one_line(exc)}") from None
            try:
                data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
            except yaml.YAMLError as exc:
                raise ConfigurationError("services_file", source, f"is not valid YAML: {_one_line(exc)}") from None
            registry = cls.from_mapping(data, source=source)
        return registry.with_environ(os.environ if environ is None else environ)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<mapping>") -> ServiceRegistry:
        """Build a registry from parsed YAML/JSON (no environment overrides).

        Args:
            data: ``{"services": {name: {...}}}`` as described in the module docstring.
            source: label for messages, e.g. the file path.

        Returns:
            The registry.

        Raises:
            ConfigurationError: naming the key path of the first problem found.
        """
        if not isinstance(data, dict):
            what = "is empty" if data is None else f"must be a mapping with a 'services' key, not {_kind(data)}"
            raise _error(source, "(document)", data if data is None else _kind(data), what)
        unknown = sorted(str(k) for k in data if k != "services")
        if unknown:
            raise _error(source, unknown[0], None, "unknown key; only 'services' is allowed")
        if "services" not in data:
            raise _error(source, "services", None, "is required")
        raw = data["services"]
        if raw is None:
            raw = {}  # every entry commented out
        if not isinstance(raw, dict):
            raise _error(source, "services", _kind(raw), "must be a mapping of service name to settings")
        services: dict[str, ServiceEndpoint] = {}
        env_names: dict[str, str] = {}
        for name, spec in raw.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise _error(source, f"services.{name}", name, "a service name must start with a letter and hold only letters, digits, '_' and '-'")
            clash = env_names.setdefault(_env_key(name), name)
            if clash != name:
                raise _error(source, f"services.{name}", name, f"clashes with service {clash!r}: both map to {ENV_PREFIX}{_env_key(name)}{ENV_SUFFIX}")
            services[name] = _parse_service(source, name, spec)
        return cls(services, source=source)

    def with_environ(self, environ: Mapping[str, str]) -> ServiceRegistry:
        """A copy with ``CORTX_SERVICE_<NAME>_URL`` overrides applied.

        Args:
            environ: the environment variables.

        Returns:
            A new registry (this one is unchanged).

        Raises:
            ConfigurationError: an override's value is not an http(s) URL.
        """
        services = dict(self._services)
        by_env = {_env_key(name): name for name in services}
        for var in sorted(environ):
            if not (var.startswith(ENV_PREFIX) and var.endswith(ENV_SUFFIX)):
                continue
            key = var[len(ENV_PREFIX) : -len(ENV_SUFFIX)]
            if not key:
                continue
            url = _check_url(var, environ[var], f"in the environment (file {self.source})")
            name = by_env.get(key.upper().replace("-", "_"))
            if name is not None:
                services[name] = replace(services[name], base_url=url)
            else:
                name = key.lower()
                if not _NAME.match(name):
                    raise ConfigurationError(var, environ[var], f"{name!r} is not a valid service name (in the environment)")
                services[name] = ServiceEndpoint(name, url, None, DEFAULT_METHOD, DEFAULT_TIMEOUT_SECONDS, {})
                by_env[_env_key(name)] = name
        return ServiceRegistry(services, source=self.source)

    # ------------------------------------------------------------------ reading

    def names(self) -> frozenset[str]:
        """The configured service names."""
        return frozenset(self._services)

    def get(self, name: str) -> ServiceEndpoint:
        """The endpoint configured for ``name``.

        Raises:
            ConfigurationError: no such service; the message lists the known names.
        """
        try:
            return self._services[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._services)) or "(none)"
            raise ConfigurationError(
                "service", name, f"unknown service; known services: {known} (registry {self.source})"
            ) from None

    def resolve(self, service: str, endpoint: str | None = None, method: str | None = None) -> ResolvedCall:
        """Where and how to call ``service``.

        Args:
            service: a configured service name.
            endpoint: path under ``base_url``; ``None`` uses the service's default.
            method: HTTP method (any case); ``None`` uses the service's default.

        Returns:
            The :class:`ResolvedCall`; ``url`` joins ``base_url`` and the endpoint with
            exactly one ``/``.

        Raises:
            ConfigurationError: unknown service, no endpoint given and no default, or a
                method that is not an HTTP method.
        """
        spec = self.get(service)
        path = endpoint if endpoint is not None else spec.endpoint
        if path is None:
            raise ConfigurationError(
                f"services.{service}.endpoint", None,
                f"the call names no endpoint and service {service!r} has no default endpoint (registry {self.source})",
            )
        if not isinstance(path, str):
            raise ConfigurationError("endpoint", path, "must be a string path")
        verb = spec.method if method is None else _check_method("method", method, f"registry {self.source}")
        segments = path.split("?", 1)[0].split("#", 1)[0].replace("\\", "/").split("/")
        if any(segment in {"..", "."} or segment.lower() in {"%2e%2e", "%2e", ".%2e", "%2e."} for segment in segments):
            # An endpoint (possibly built from run inputs) must stay below the service's base URL.
            raise ConfigurationError("endpoint", path, f"may not contain '.' or '..' segments (service {service!r})")
        if "://" in path or path.startswith("//"):
            raise ConfigurationError("endpoint", path, f"must be a path below the base URL of service {service!r}")
        url = spec.base_url.rstrip("/") + "/" + path.lstrip("/")
        return ResolvedCall(service, url, verb, spec.timeout_seconds, dict(spec.headers), spec.auth)

    def retry_policy(self, service: str) -> RetryPolicy | None:
        """The service's retry defaults, or None (unknown service, or none configured)."""
        spec = self._services.get(service)
        return None if spec is None else spec.retry

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def __len__(self) -> int:
        return len(self._services)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServiceRegistry):
            return NotImplemented
        return self._services == other._services

    __hash__ = None  # type: ignore[assignment]  # mutable-looking contents; equality by value

    def __repr__(self) -> str:
        return f"ServiceRegistry({sorted(self._services)}, source={self.source!r})"


# ---------------------------------------------------------------------- helpers


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key; construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_service(source: str, name: str, spec: Any) -> ServiceEndpoint:
    where = f"services.{name}"
    if not isinstance(spec, dict):
        raise _error(source, where, _kind(spec), "must be a mapping with at least 'base_url'")
    unknown = sorted(str(k) for k in spec if k not in _SERVICE_KEYS)
    if unknown:
        raise _error(source, f"{where}.{unknown[0]}", None, f"unknown key; allowed: {', '.join(sorted(_SERVICE_KEYS))}")
    if "base_url" not in spec:
        raise _error(source, f"{where}.base_url", None, "is required")
    base_url = _check_url(f"{where}.base_url", spec["base_url"], f"in {source}")

    endpoint = spec.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or "://" in endpoint):
        raise _error(source, f"{where}.endpoint", endpoint, "must be a path such as /v1/check")

    method = DEFAULT_METHOD
    if "method" in spec:
        method = _check_method(f"{where}.method", spec["method"], f"in {source}")

    timeout = spec.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise _error(source, f"{where}.timeout_seconds", timeout, "must be a positive number of seconds")

    headers = spec.get("headers") or {}
    if not isinstance(headers, dict):
        raise _error(source, f"{where}.headers", _kind(headers), "must be a mapping of header name to string value")
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_NAME.match(key):
            raise _error(source, f"{where}.headers.{key}", key, "is not a valid HTTP header name")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            # The value may be a secret: report its type, not the value.
            raise _error(source, f"{where}.headers.{key}", _kind(value), "must be a one-line string (quote numbers in YAML)")
    auth = _parse_auth(source, f"{where}.auth", spec["auth"]) if spec.get("auth") is not None else None
    retry = None
    if spec.get("retry") is not None:
        if not isinstance(spec["retry"], dict):
            raise _error(source, f"{where}.retry", _kind(spec["retry"]), "must be a mapping of on_error.retry fields")
        try:
            retry = RetryPolicy.model_validate(spec["retry"])
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise _error(source, f"{where}.retry" + (f".{field}" if field else ""), None, first["msg"]) from None
    return ServiceEndpoint(name, base_url, endpoint, method, float(timeout), dict(headers), auth, retry)


def _parse_auth(source: str, where: str, spec: Any) -> tuple[str, str | None, str]:
    if not isinstance(spec, dict):
        raise _error(source, where, _kind(spec), "must be a mapping with 'secret' (and optional 'header', 'scheme')")
    unknown = sorted(str(k) for k in spec if k not in _AUTH_KEYS)
    if unknown:
        raise _error(source, f"{where}.{unknown[0]}", None, f"unknown key; allowed: {', '.join(sorted(_AUTH_KEYS))}")
    header = spec.get("header", "Authorization")
    if not isinstance(header, str) or not _HEADER_NAME.match(header):
        raise _error(source, f"{where}.header", header, "is not a valid HTTP header name")
    scheme = spec.get("scheme")
    if scheme is not None and (not isinstance(scheme, str) or not _HEADER_NAME.match(scheme)):
        raise _error(source, f"{where}.scheme", scheme, "must be one word, e.g. Bearer")
    secret = spec.get("secret")
    if not isinstance(secret, str) or not re.fullmatch(SECRET_NAME_PATTERN, secret):
        raise _error(source, f"{where}.secret", secret, "must name a secret: letters, digits and '_', not starting with a digit")
    return header, scheme, secret


def _check_url(name: str, value: Any, where: str) -> str:
    ok = isinstance(value, str)
    if ok:
        try:
            parts = urlsplit(value.strip())
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
    if not ok:
        raise ConfigurationError(name, value, f"must be an http:// or https:// URL with a host and no query ({where})")
    return value.strip().rstrip("/")


def _check_method(name: str, value: Any, where: str) -> str:
    if not isinstance(value, str) or value.upper() not in METHODS:
        raise ConfigurationError(name, value, f"must be one of {', '.join(sorted(METHODS))} ({where})")
    return value.upper()


def _error(source: str, key_path: str, value: Any, rule: str) -> ConfigurationError:
    return ConfigurationError(key_path, value, f"{rule} (in {source})")


def _env_key(name: str) -> str:
    return name.upper().replace("-", "_")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
