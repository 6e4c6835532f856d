"""The egress guard: which URLs a pack may make the engine call (server-side request forgery).

Services in the registry are trusted configuration and may live anywhere. A URL that comes
from a pack or from run inputs (the ``http`` step, webhooks) is not: a pack author or a
caller could aim it at the engine's own network -- a database port, an admin API, the cloud
metadata service at ``169.254.169.254``. Such URLs go through this guard (FDD §2.4 "External
APIs", §4.1):

1. **URL rules** (:func:`check_url`): scheme ``http``/``https``; a host, parsed the way
   httpx parses it (so the host checked is the host connected to); numeric hosts only in
   canonical form (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1`` are refused: libc
   reads them as ``127.0.0.1``); the host, and port, must match an entry of the allowlist.
2. **Address rules** (:func:`address_rule`): loopback, private (``10/8``, ``172.16/12``,
   ``192.168/16``, ``100.64/10``, ``fc00::/7``, ``fec0::/10``), link-local (``169.254/16``
   with the metadata address, ``fe80::/10``), unspecified, multicast, reserved and other
   special-purpose addresses are refused, also when written as IPv4 inside IPv6
   (``::ffff:127.0.0.1``, ``::127.0.0.1``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``).
3. **After DNS**: a guarded client's connections resolve the host, check *every* address
   and connect only to an address that was checked, in the same call, so a DNS answer that
   changes between check and connect (rebinding) cannot slip through. TLS still verifies
   the certificate against the host name (SNI and Host are the URL's).
4. **Redirects** are followed by the caller one hop at a time, each hop checked by 1 to 3
   (``actors.http_step``), at most ``max_redirects`` hops.

The allowlist (``CORTX_HTTP_ALLOWED_HOSTS``, comma-separated) holds entries of the forms::

    api.example.com          that host, any port
    api.example.com:8443     that host and port (a URL without a port has 80 or 443)
    *.partner.io             every sub-domain of partner.io (not partner.io itself)
    *                        every host (the address rules still apply)
    203.0.113.7, 127.0.0.1:8700, [::1]:9000
                             that address (and port): naming an address allows it even
                             when an address rule would refuse it -- the explicit opt-in
                             for private targets such as a test server on loopback

``CORTX_HTTP_ALLOW_PRIVATE=true`` lets allowlisted hosts reach loopback and private
addresses (an internal API behind internal DNS); link-local, multicast, unspecified and
reserved addresses stay refused unless an entry names the address itself. The default
allowlist is empty: every such URL is refused.

Refusals raise :class:`EgressRefusedError` naming the host and the rule; the ``http`` step
records it as a non-retryable failure of kind ``egress_refused``.

Use from another step type (a webhook)::

    policy = EgressPolicy.from_settings(settings)
    check_url(url, policy)                 # raises EgressRefusedError
    response = guarded_client(policy).post(url, json=payload)   # checked again on connect
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from dsl.errors import WorkflowError

__all__ = [
    "DEFAULT_MAX_REDIRECTS",
    "EgressPolicy",
    "EgressRefusedError",
    "HostPattern",
    "PRIVATE_RULES",
    "address_rule",
    "check_address",
    "check_url",
    "close_guarded_clients",
    "guarded_client",
    "parse_allowed_hosts",
]

DEFAULT_MAX_REDIRECTS = 5
"""Redirect hops an ``http`` step follows before failing (``CORTX_HTTP_MAX_REDIRECTS``)."""

PRIVATE_RULES = frozenset({"loopback", "private"})
"""Address rules that ``CORTX_HTTP_ALLOW_PRIVATE=true`` lifts for allowlisted hosts."""

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_CLASSIC_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class EgressRefusedError(WorkflowError):
    """A URL from a pack or run inputs may not be called.

    Args:
        host: the host as parsed from the URL (or the address it resolved to).
        rule: stable name of the rule that refused it: ``invalid_url``, ``scheme``,
            ``ip_notation``, ``not_allowlisted``, ``loopback``, ``private``, ``link_local``,
            ``unspecified``, ``multicast``, ``reserved``, ``special_purpose``.
        detail: one phrase, e.g. ``"resolves to 10.0.0.7, a private address"``.
        url: the URL (user-info removed), when known.
    """

    code = "egress_refused"

    def __init__(self, host: str, rule: str, detail: str, url: str | None = None) -> None:
        super().__init__(host, rule, detail, url)
        self.host, self.rule, self.detail, self.url = host, rule, detail, url

    def message(self) -> str:
        """``refused to call <url>: host '<host>' <detail> (rule <rule>)``."""
        target = f" {self.url}" if self.url else ""
        return f"refused to call{target}: host {self.host!r} {self.detail} (rule {self.rule})"

    def with_url(self, url: str) -> EgressRefusedError:
        """The same refusal naming ``url``."""
        return EgressRefusedError(self.host, self.rule, self.detail, url)


@dataclass(frozen=True)
class HostPattern:
    """One allowlist entry, parsed.

    Attributes:
        host: lower-case ASCII host (IDNA), an address in canonical form, or ``""`` for ``*``.
        port: the port it is limited to, or None for any.
        wildcard: True for ``*.domain`` (sub-domains only) and ``*`` (any host).
        address: True when ``host`` is an IP address (naming it allows it).
        text: the entry as written.
    """

    host: str
    port: int | None
    wildcard: bool
    address: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Read one entry (forms in the module docstring).

        Raises:
            ValueError: a sentence naming the entry and what is wrong with it.
        """
        raw = text.strip()
        if not raw:
            raise ValueError("an empty entry")
        if raw == "*" or raw.startswith("*:"):
            port = _parse_port(raw, raw[2:]) if raw.startswith("*:") else None
            return cls("", port, True, False, raw)
        wildcard = raw.startswith("*.")
        body = raw[2:] if wildcard else raw
        if "*" in body or "/" in body or "@" in body:
            raise ValueError(f"{raw!r}: write a host, *.domain or * with an optional :port (no paths, no user)")
        port: int | None = None
        if body.startswith("["):  # [v6] or [v6]:port
            inside, _, rest = body[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{raw!r}: write an IPv6 address as [address] or [address]:port")
                port = _parse_port(raw, rest[1:])
            name = inside
        elif body.count(":") >= 2:  # a bare IPv6 address: no port possible
            name = body
        else:
            name, colon, port_text = body.partition(":")
            port = _parse_port(raw, port_text) if colon else None
        ip = _ip_or_none(name)
        if ip is not None:
            host = _canonical(ip)
        else:
            try:
                host = _host_of(httpx.URL(f"http://{name}/"))
            except httpx.InvalidURL as exc:
                raise ValueError(f"{raw!r}: {exc}") from None
            if not host or _ip_or_none(host) is not None:
                raise ValueError(f"{raw!r}: write a host, *.domain or * with an optional :port")
            if _numeric_looking(host):
                raise ValueError(f"{raw!r}: write addresses in canonical form (e.g. 127.0.0.1)")
        if wildcard and ip is not None:
            raise ValueError(f"{raw!r}: a wildcard needs a domain name, not an address")
        return cls(host, port, wildcard, ip is not None, raw)

    def matches(self, host: str, port: int) -> bool:
        """Whether ``host`` (lower-case ASCII, as :func:`check_url` normalizes it) and ``port`` match."""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return not self.host or host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True)
class EgressPolicy:
    """What a URL from a pack may reach; picklable, so it travels with a step to its task.

    Attributes:
        allowed_hosts: the allowlist entries (``CORTX_HTTP_ALLOWED_HOSTS``).
        allow_private: let allowlisted hosts reach loopback and private addresses
            (``CORTX_HTTP_ALLOW_PRIVATE``).
        max_redirects: redirect hops followed, each checked (``CORTX_HTTP_MAX_REDIRECTS``).
    """

    allowed_hosts: tuple[HostPattern, ...] = ()
    allow_private: bool = False
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings: Any) -> EgressPolicy:
        """The policy of an :class:`actors.settings.Settings` (its ``http_*`` fields)."""
        return cls(
            parse_allowed_hosts(getattr(settings, "http_allowed_hosts", ())),
            bool(getattr(settings, "http_allow_private", False)),
            int(getattr(settings, "http_max_redirects", DEFAULT_MAX_REDIRECTS)),
        )

    def entry_for(self, host: str, port: int) -> HostPattern | None:
        """The first allowlist entry matching ``host`` and ``port``, or None."""
        for pattern in self.allowed_hosts:
            if pattern.matches(host, port):
                return pattern
        return None

    def names_address(self, address: str, port: int) -> bool:
        """Whether an address entry names ``address`` (canonical text) for ``port``."""
        return any(p.address and p.host == address and p.port in (None, port) for p in self.allowed_hosts)


def parse_allowed_hosts(entries: str | Iterable[str | HostPattern]) -> tuple[HostPattern, ...]:
    """Allowlist entries from ``"a.example.com, *.partner.io:443"`` or an iterable of entries.

    Raises:
        ValueError: naming the first bad entry (settings turn it into a ConfigurationError).
    """
    items = entries.split(",") if isinstance(entries, str) else list(entries)
    patterns: list[HostPattern] = []
    for item in items:
        if isinstance(item, HostPattern):
            patterns.append(item)
        elif item.strip():
            patterns.append(HostPattern.parse(item))
    return tuple(patterns)


# --- rules --------------------------------------------------------------------------------------


def address_rule(address: _IPAddress) -> str | None:
    """The rule that refuses ``address``, or None when it is a public address.

    IPv4 written inside IPv6 (mapped, compatible, 6to4, NAT64) is judged as the IPv4
    address it carries.
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is None and address in _IPV4_COMPATIBLE and int(address) > 1:
            inner = ipaddress.IPv4Address(int(address))
        if inner is not None:
            return address_rule(inner)  # judged as the IPv4 address it carries
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in _CLASSIC_PRIVATE if network.version == address.version):
        return "private"
    if address.version == 4 and address in _CGNAT:
        return "private"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "special_purpose"
    return None


_RULE_PHRASES = {
    "loopback": "a loopback address",
    "private": "a private address",
    "link_local": "a link-local address (cloud metadata lives there)",
    "unspecified": "the unspecified address",
    "multicast": "a multicast address",
    "reserved": "a reserved address",
    "special_purpose": "a special-purpose address",
}


def check_address(address: str, port: int, policy: EgressPolicy, *, host: str | None = None) -> None:
    """Refuse a connection to ``address`` unless it is public or the policy allows it.

    Args:
        address: an IP address in any form ``ipaddress`` reads (``"10.0.0.7"``, ``"::1"``).
        port: the TCP port.
        policy: the allowlist and ``allow_private``.
        host: the name ``address`` was resolved from, for the message; None for a literal.

    Raises:
        EgressRefusedError: rule ``loopback``, ``private``, ``link_local``, ... (see
            :func:`address_rule`); ``invalid_url`` if ``address`` is not an address.
    """
    ip = _ip_or_none(address)
    if ip is None:
        raise EgressRefusedError(host or address, "invalid_url", "is not an IP address")
    canonical = _canonical(ip)
    if policy.names_address(canonical, port):
        return  # the operator named this address: the explicit opt-in
    rule = address_rule(ip)
    if rule is None:
        return
    if rule in PRIVATE_RULES and policy.allow_private:
        return
    phrase = _RULE_PHRASES[rule]
    detail = f"resolves to {canonical}, {phrase}" if host is not None else f"is {phrase}"
    hint = "; set CORTX_HTTP_ALLOW_PRIVATE=true or list the address" if rule in PRIVATE_RULES else ""
    raise EgressRefusedError(host or canonical, rule, detail + hint)


def check_url(url: str | httpx.URL, policy: EgressPolicy) -> None:
    """Apply the URL rules (module docstring, 1 and 2 for address literals) to ``url``.

    A host name passes here when allowlisted; its addresses are checked when a guarded
    client connects (:func:`guarded_client`).

    Args:
        url: absolute URL.
        policy: the allowlist and ``allow_private``.

    Raises:
        EgressRefusedError: naming the host and the rule (``invalid_url``, ``scheme``,
            ``ip_notation``, ``not_allowlisted`` or an address rule).
    """
    shown = _shown(url)
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise EgressRefusedError("", "invalid_url", f"cannot be parsed: {exc}", shown) from None
    if parsed.scheme not in ("http", "https"):
        detail = f"is reached over {parsed.scheme or 'no'} scheme; only http and https are allowed"
        raise EgressRefusedError(_host_of(parsed), "scheme", detail, shown)
    host = _host_of(parsed)
    if not host:
        raise EgressRefusedError("", "invalid_url", "is missing: the URL names no host", shown)
    ip = _ip_or_none(host)
    if ip is None and _numeric_looking(host):
        raise EgressRefusedError(
            host, "ip_notation", "is an address in a non-canonical notation (write it as a.b.c.d)", shown
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if policy.entry_for(host, port) is None and not (ip is not None and policy.names_address(_canonical(ip), port)):
        raise EgressRefusedError(host, "not_allowlisted", f"(port {port}) is not in CORTX_HTTP_ALLOWED_HOSTS", shown)
    if ip is not None:
        try:
            check_address(host, port, policy)
        except EgressRefusedError as exc:
            raise EgressRefusedError(host, exc.rule, exc.detail, shown) from None


# --- the guarded client -------------------------------------------------------------------------


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks every address, and connects only to a checked one (no rebinding gap)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        name = host.strip("[]").lower()
        if _ip_or_none(name) is not None:
            check_address(name, port, self._policy)
            addresses = [name]
        else:
            if _numeric_looking(name):
                raise EgressRefusedError(name, "ip_notation", "is an address in a non-canonical notation")
            try:
                infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {name!r}: {exc}") from None
            addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
            for address in addresses:  # every address: a mixed answer is refused as a whole
                check_address(address, port, self._policy, host=name)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the connection pool's network backend replaced by the guard."""

    def __init__(self, policy: EgressPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        ssl_context = self._pool._ssl_context  # the verified default context httpx built
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


_POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0)
_clients: dict[EgressPolicy, httpx.Client] = {}
_clients_pid: int | None = None
_clients_lock = threading.Lock()


def guarded_client(policy: EgressPolicy) -> httpx.Client:
    """The process's pooled client for ``policy``: every new connection passes the address rules.

    It never follows redirects (the caller checks each hop with :func:`check_url`) and reads
    no proxy settings from the environment. One client per policy and process; a forked
    child makes its own. The pool is kept apart from ``actors.http_call``'s, so a connection
    a trusted service call opened is never reused for an unchecked URL.

    Raises:
        (from requests made with it) EgressRefusedError when a resolved address is refused.
    """
    global _clients_pid
    pid = os.getpid()
    with _clients_lock:
        if _clients_pid != pid:
            _clients.clear()  # inherited through fork: sockets shared with the parent
            _clients_pid = pid
        client = _clients.get(policy)
        if client is None:
            client = _clients[policy] = httpx.Client(
                transport=_GuardedTransport(policy, _POOL_LIMITS), follow_redirects=False, trust_env=False
            )
        return client


def close_guarded_clients() -> None:
    """Close this process's guarded clients and their connections."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


# --- helpers ------------------------------------------------------------------------------------


def _parse_port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return int(text)


def _host_of(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii", "replace").lower().rstrip(".")


def _ip_or_none(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _canonical(ip: _IPAddress) -> str:
    return ip.compressed


def _numeric_looking(host: str) -> bool:
    """True for hosts libc would read as an IPv4 address: ``2130706433``, ``0x7f.1``, ``127.1``.

    The WHATWG URL rules treat a host whose last label is a number as an address, so any
    such host is refused unless it is canonical dotted-quad notation.
    """
    last = host.rstrip(".").rsplit(".", 1)[-1]
    if not last:
        return False
    if last.isdigit():
        return True
    return last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])


def _shown(url: Any) -> str:
    text = str(url)
    try:
        parsed = httpx.URL(text)
        if parsed.userinfo:
            text = str(parsed.copy_with(username=None, password=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        pass
    return text[:300]
