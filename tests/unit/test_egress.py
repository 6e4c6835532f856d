"""The egress guard without a network: address rules, notations, allowlist patterns, DNS answers.

The DNS tests replace ``socket.getaddrinfo`` (the edge: a resolver's answer) to play a
name that resolves to a private address, a mixed answer, and a rebinding resolver; the
connection attempt itself is real.
"""

from __future__ import annotations

import ipaddress
import pickle
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from actors import egress
from actors.egress import (
    EgressPolicy,
    EgressRefusedError,
    HostPattern,
    address_rule,
    check_address,
    check_url,
    close_guarded_clients,
    guarded_client,
    parse_allowed_hosts,
)
from actors.settings import Settings
from dsl.errors import ConfigurationError, WorkflowError

ANY = EgressPolicy(parse_allowed_hosts("*"))


def refused_rule(url: str, policy: EgressPolicy = ANY) -> str | None:
    try:
        check_url(url, policy)
    except EgressRefusedError as exc:
        return exc.rule
    return None


# --- address rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
        ("100.64.0.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"), ("fec0::1", "private"),
        ("169.254.169.254", "link_local"), ("169.254.0.1", "link_local"), ("fe80::1", "link_local"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
        ("192.0.2.10", "special_purpose"), ("2001:db8::1", "special_purpose"),
        # IPv4 inside IPv6 is judged as the IPv4 address.
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link_local"), ("::ffff:10.1.1.1", "private"),
        ("::127.0.0.1", "loopback"), ("64:ff9b::a9fe:a9fe", "link_local"), ("2002:0a00:0001::1", "private"),
    ],
)
def test_special_addresses_are_refused_with_their_rule(address: str, rule: str) -> None:
    assert address_rule(ipaddress.ip_address(address)) == rule


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_rule(ipaddress.ip_address(address)) is None
    check_address(address, 443, ANY)


# --- URL rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/", "http://017700000001/", "http://0x7f000001/", "http://0x7f.1/", "http://0x7F.0.0.1/",
        "http://127.1/", "http://127.0.1/", "http://0177.0.0.1/", "http://169.254.43518/", "http://0xa9fea9fe/",
        "http://example.123/",
    ],
)
def test_alternate_ip_notations_are_refused(url: str) -> None:
    assert refused_rule(url) in {"ip_notation", "invalid_url"}


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]:8080/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[0:0:0:0:0:ffff:a9fe:a9fe]/", "link_local"),
        ("http://169.254.169.254/latest/meta-data/", "link_local"),
        ("http://[fe80::1%25eth0]/", "link_local"),
        ("http://10.0.0.7/", "private"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("https://user:pw@10.1.2.3/", "private"),
        ("gopher://example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http:///nohost", "invalid_url"),
        ("http://exa\x00mple.com/", "invalid_url"),
    ],
)
def test_url_rules_name_the_rule(url: str, rule: str) -> None:
    assert refused_rule(url) == rule


def test_refusal_names_host_rule_and_url_without_credentials() -> None:
    with pytest.raises(EgressRefusedError) as caught:
        check_url("http://admin:hunter2@169.254.169.254/latest", ANY)
    error = caught.value
    assert (error.host, error.rule, error.code) == ("169.254.169.254", "link_local", "egress_refused")
    assert "hunter2" not in str(error) and "169.254.169.254/latest" in str(error) and "rule link_local" in str(error)
    assert isinstance(error, WorkflowError)
    again = pickle.loads(pickle.dumps(error))  # crosses Ray process boundaries
    assert (again.host, again.rule, again.url, str(again)) == (error.host, error.rule, error.url, str(error))


# --- allowlist patterns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "url", "allowed"),
    [
        ("api.example.com", "https://api.example.com/v1", True),
        ("api.example.com", "https://API.Example.COM./v1", True),  # case and the root dot
        ("api.example.com", "https://example.com/", False),
        ("api.example.com", "https://evil-api.example.com/", False),
        ("api.example.com", "https://api.example.com.evil.io/", False),
        ("api.example.com:8443", "https://api.example.com:8443/", True),
        ("api.example.com:8443", "https://api.example.com/", False),  # 443
        ("api.example.com:443", "https://api.example.com/", True),
        ("api.example.com:80", "https://api.example.com/", False),
        ("*.partner.io", "https://a.partner.io/", True),
        ("*.partner.io", "https://a.b.partner.io/", True),
        ("*.partner.io", "https://partner.io/", False),
        ("*.partner.io", "https://evilpartner.io/", False),
        ("*.partner.io:443", "http://a.partner.io/", False),
        ("bücher.de", "https://xn--bcher-kva.de/", True),  # names compared in IDNA form
        ("api.example.com, *.partner.io", "https://x.partner.io/", True),
        ("", "https://api.example.com/", False),  # the default: nothing
        ("*", "https://anything.example/", True),
        ("api.example.com", "https://api.example.com@evil.io/", False),  # user-info is not the host
    ],
)
def test_allowlist_patterns(entries: str, url: str, allowed: bool) -> None:
    rule = refused_rule(url, EgressPolicy(parse_allowed_hosts(entries)))
    assert (rule is None) == allowed, rule
    if not allowed:
        assert rule == "not_allowlisted"


def test_naming_an_address_is_the_opt_in_for_that_address_and_port_only() -> None:
    policy = EgressPolicy(parse_allowed_hosts("127.0.0.1:8700, [::1]:9000, 10.0.0.7"))
    check_url("http://127.0.0.1:8700/x", policy)
    check_url("http://[::1]:9000/", policy)
    check_url("http://10.0.0.7:1234/", policy)
    assert refused_rule("http://127.0.0.1:8701/", policy) == "not_allowlisted"
    assert refused_rule("http://127.0.0.2:8700/", policy) == "not_allowlisted"
    assert refused_rule("http://[::ffff:127.0.0.1]:8700/", policy) == "not_allowlisted"


def test_allow_private_lifts_loopback_and_private_but_not_link_local() -> None:
    policy = EgressPolicy(parse_allowed_hosts("*"), allow_private=True)
    check_url("http://10.0.0.7/", policy)
    check_url("http://127.0.0.1:5000/", policy)
    assert refused_rule("http://169.254.169.254/", policy) == "link_local"
    assert refused_rule("http://0.0.0.0/", policy) == "unspecified"
    assert refused_rule("http://2130706433/", policy) == "ip_notation"


@pytest.mark.parametrize(
    "entry", ["http://api.example.com", "api.example.com/path", "*.*.io", "*.10.0.0.1", "api.example.com:0",
              "api.example.com:99999", "user@api.example.com", "2130706433", "*foo.io"],
)
def test_bad_allowlist_entries_are_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError):
        HostPattern.parse(entry)
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"CORTX_HTTP_ALLOWED_HOSTS": f"ok.example.com, {entry}"})
    assert caught.value.name == "CORTX_HTTP_ALLOWED_HOSTS"


def test_settings_read_the_policy_once() -> None:
    settings = Settings.from_env(
        {"CORTX_HTTP_ALLOWED_HOSTS": " api.example.com ,*.partner.io:443,, 127.0.0.1:8700",
         "CORTX_HTTP_ALLOW_PRIVATE": "true", "CORTX_HTTP_MAX_REDIRECTS": "2"}
    )
    assert settings.http_allowed_hosts == ("api.example.com", "*.partner.io:443", "127.0.0.1:8700")
    policy = EgressPolicy.from_settings(settings)
    assert policy.allow_private is True and policy.max_redirects == 2
    assert [p.text for p in policy.allowed_hosts] == list(settings.http_allowed_hosts)
    default = EgressPolicy.from_settings(Settings.from_env({}))
    assert default == EgressPolicy() and default.allowed_hosts == () and default.allow_private is False
    with pytest.raises(ConfigurationError):
        Settings.from_env({"CORTX_HTTP_MAX_REDIRECTS": "50"})
    assert pickle.loads(pickle.dumps(policy)) == policy


# --- after DNS: the guarded client's connections ----------------------------------------------


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[list[str]]]]:
    """``answers[name]``: the address lists successive lookups of ``name`` return."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(egress.socket, "getaddrinfo", getaddrinfo)
    close_guarded_clients()
    yield answers
    close_guarded_clients()


@pytest.mark.parametrize(
    ("addresses", "rule"),
    [(["10.0.0.7"], "private"), (["169.254.169.254"], "link_local"), (["93.184.216.34", "127.0.0.1"], "loopback"),
     (["::ffff:127.0.0.1"], "loopback")],
)
def test_a_name_is_refused_when_any_of_its_addresses_is(
    resolver: dict[str, list[list[str]]], addresses: list[str], rule: str
) -> None:
    resolver["api.example.com"] = [addresses]
    policy = EgressPolicy(parse_allowed_hosts("api.example.com"))
    check_url("http://api.example.com/", policy)  # the name itself is allowed
    with pytest.raises(EgressRefusedError) as caught:
        guarded_client(policy).get("http://api.example.com/", timeout=2)
    assert caught.value.rule == rule and caught.value.host == "api.example.com"
    assert "resolves to" in str(caught.value)


def test_a_rebinding_answer_is_checked_on_the_connection_that_uses_it(resolver: dict[str, list[list[str]]]) -> None:
    # A resolver that answers public first and loopback afterwards: whatever an earlier check
    # saw, the connection resolves once and connects only to what it checked.
    resolver["rebind.example.com"] = [["93.184.216.34"], ["127.0.0.1"]]
    policy = EgressPolicy(parse_allowed_hosts("rebind.example.com"))
    socket_lookup = egress.socket.getaddrinfo("rebind.example.com", 80)  # "the check" sees the public address
    assert socket_lookup[0][4][0] == "93.184.216.34"
    with pytest.raises(EgressRefusedError) as caught:
        guarded_client(policy).get("http://rebind.example.com/", timeout=2)
    assert caught.value.rule == "loopback"


def test_guarded_clients_are_pooled_per_policy_and_not_shared_with_service_calls() -> None:
    from actors.http_call import _get_client

    one = EgressPolicy(parse_allowed_hosts("a.example.com"))
    assert guarded_client(one) is guarded_client(EgressPolicy(parse_allowed_hosts("a.example.com")))
    assert guarded_client(one) is not guarded_client(EgressPolicy(parse_allowed_hosts("b.example.com")))
    assert guarded_client(one) is not _get_client()
    assert guarded_client(one).follow_redirects is False
    close_guarded_clients()
