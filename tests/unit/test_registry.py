"""The service registry: the example file, URL joining, environment overrides, errors, pickling."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors.registry import ResolvedCall, ServiceEndpoint, ServiceRegistry
from dsl.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "services.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _service(**settings: object) -> dict:
    return {"services": {"svc": {"base_url": "http://127.0.0.1:9/api", **settings}}}


# ---------------------------------------------------------------- the example file


def test_example_file_defines_demo_services() -> None:
    registry = ServiceRegistry.load(EXAMPLE, environ={})
    assert registry.names() == frozenset({"validation", "compliance", "ledger"})
    for name in ("validation", "compliance", "ledger"):
        assert registry.get(name).base_url == f"http://127.0.0.1:8700/{name}"
    assert registry.resolve("validation") == ResolvedCall(
        service="validation",
        url="http://127.0.0.1:8700/validation/v1/identity",
        method="POST",
        timeout_seconds=10.0,
        headers={"X-Client": "cortx-workflow"},
    )
    assert registry.resolve("ledger").url == "http://127.0.0.1:8700/ledger/v1/entries"
    assert registry.resolve("compliance", "/v1/manager-review").url == "http://127.0.0.1:8700/compliance/v1/manager-review"


def test_defaults(tmp_path: Path) -> None:
    registry = ServiceRegistry.load(_write(tmp_path, "services: {svc: {base_url: 'https://x.example'}}"), environ={})
    assert registry.get("svc") == ServiceEndpoint("svc", "https://x.example", None, "POST", 10.0, {})


# ---------------------------------------------------------------- resolve


@pytest.mark.parametrize("base", ["http://h:1/api", "http://h:1/api/"])
@pytest.mark.parametrize("endpoint", ["v1/x", "/v1/x"])
def test_resolve_joins_with_exactly_one_slash(base: str, endpoint: str) -> None:
    registry = ServiceRegistry.from_mapping({"services": {"s": {"base_url": base}}})
    assert registry.resolve("s", endpoint).url == "http://h:1/api/v1/x"


def test_resolve_overrides_method_and_copies_headers() -> None:
    registry = ServiceRegistry.from_mapping(_service(endpoint="/d", method="put", headers={"X-A": "1"}))
    call = registry.resolve("svc", method="get")
    assert (call.url, call.method) == ("http://127.0.0.1:9/api/d", "GET")
    assert registry.resolve("svc").method == "PUT"
    call.headers["X-B"] = "2"
    assert registry.get("svc").headers == {"X-A": "1"}  # the registry is not changed through a result


def test_unknown_service_names_it_and_the_known_ones() -> None:
    registry = ServiceRegistry.from_mapping({"services": {"b": {"base_url": "http://h"}, "a": {"base_url": "http://h"}}})
    with pytest.raises(ConfigurationError) as info:
        registry.resolve("billing", "/x")
    assert info.value.name == "service" and info.value.value == "billing"
    assert "known services: a, b" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"known services: \(none\)"):
        ServiceRegistry.load(None, environ={}).get("a")


def test_no_endpoint_and_no_default() -> None:
    registry = ServiceRegistry.from_mapping(_service())
    with pytest.raises(ConfigurationError) as info:
        registry.resolve("svc")
    assert info.value.name == "services.svc.endpoint" and "no default endpoint" in str(info.value)


def test_resolve_rejects_a_bad_method() -> None:
    registry = ServiceRegistry.from_mapping(_service(endpoint="/x"))
    with pytest.raises(ConfigurationError, match="must be one of"):
        registry.resolve("svc", method="FETCH")


# ---------------------------------------------------------------- environment overrides


def test_env_overrides_existing_base_url() -> None:
    env = {"CORTX_SERVICE_VALIDATION_URL": "https://validation.prod.example/", "UNRELATED": "x"}
    registry = ServiceRegistry.load(EXAMPLE, environ=env)
    spec = registry.get("validation")
    assert spec.base_url == "https://validation.prod.example"
    assert spec.endpoint == "/v1/identity" and spec.headers == {"X-Client": "cortx-workflow"}  # the rest is kept
    assert registry.resolve("validation").url == "https://validation.prod.example/v1/identity"
    assert registry.get("ledger").base_url == "http://127.0.0.1:8700/ledger"


def test_env_matches_hyphenated_names(tmp_path: Path) -> None:
    path = _write(tmp_path, "services: {credit-bureau: {base_url: 'http://old'}}")
    registry = ServiceRegistry.load(path, environ={"CORTX_SERVICE_CREDIT_BUREAU_URL": "http://new:81"})
    assert registry.names() == frozenset({"credit-bureau"})
    assert registry.get("credit-bureau").base_url == "http://new:81"


def test_env_adds_a_new_service_with_defaults() -> None:
    registry = ServiceRegistry.load(None, environ={"CORTX_SERVICE_FRAUD_SCORE_URL": "http://fraud:8080/api"})
    assert registry.names() == frozenset({"fraud_score"})
    assert registry.get("fraud_score") == ServiceEndpoint("fraud_score", "http://fraud:8080/api", None, "POST", 10.0, {})
    assert registry.resolve("fraud_score", "score").url == "http://fraud:8080/api/score"


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTX_SERVICE_LEDGER_URL", "http://ledger.internal")
    assert ServiceRegistry.load(EXAMPLE).get("ledger").base_url == "http://ledger.internal"


@pytest.mark.parametrize("value", ["ftp://x", "not a url", "", "http://"])
def test_env_bad_url_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ServiceRegistry.load(EXAMPLE, environ={"CORTX_SERVICE_LEDGER_URL": value})
    assert info.value.name == "CORTX_SERVICE_LEDGER_URL" and info.value.value == value


# ---------------------------------------------------------------- errors name the key path


@pytest.mark.parametrize(
    ("yaml_text", "key_path", "fragment"),
    [
        ("services: {v: {base_url: 'http://h', timeout_seconds: -1}}", "services.v.timeout_seconds", "positive"),
        ("services: {v: {base_url: 'http://h', timeout_seconds: 0}}", "services.v.timeout_seconds", "positive"),
        ("services: {v: {base_url: 'http://h', timeout_seconds: soon}}", "services.v.timeout_seconds", "positive"),
        ("services: {v: {base_url: 'http://h', timeout_seconds: true}}", "services.v.timeout_seconds", "positive"),
        ("services: {v: {base_url: 'ftp://h'}}", "services.v.base_url", "http"),
        ("services: {v: {base_url: 'http://h?x=1'}}", "services.v.base_url", "no query"),
        ("services: {v: {base_url: 42}}", "services.v.base_url", "http"),
        ("services: {v: {endpoint: /x}}", "services.v.base_url", "required"),
        ("services: {v: {base_url: 'http://h', endpont: /x}}", "services.v.endpont", "unknown key"),
        ("services: {v: {base_url: 'http://h', endpoint: 5}}", "services.v.endpoint", "path"),
        ("services: {v: {base_url: 'http://h', method: FETCH}}", "services.v.method", "must be one of"),
        ("services: {v: {base_url: 'http://h', headers: [a]}}", "services.v.headers", "mapping"),
        ("services: {v: {base_url: 'http://h', headers: {X-Version: 2}}}", "services.v.headers.X-Version", "string"),
        ("services: {v: {base_url: 'http://h', headers: {'bad name': x}}}", "services.v.headers.bad name", "header name"),
        ("services: {v: http://h}", "services.v", "mapping"),
        ("services: {'9lives': {base_url: 'http://h'}}", "services.9lives", "service name"),
        ("services: {a-b: {base_url: 'http://h'}, a_b: {base_url: 'http://h'}}", "services.a_b", "clashes"),
        ("services: [validation]", "services", "mapping"),
        ("servics: {}", "servics", "unknown key"),
        ("other: 1\nservices: {}", "other", "unknown key"),
        ("[1, 2]", "(document)", "mapping"),
        ("", "(document)", "empty"),
        ("{}", "services", "required"),
    ],
)
def test_invalid_file_names_file_and_key_path(tmp_path: Path, yaml_text: str, key_path: str, fragment: str) -> None:
    path = _write(tmp_path, yaml_text)
    with pytest.raises(ConfigurationError) as info:
        ServiceRegistry.load(path, environ={})
    assert info.value.name == key_path
    message = str(info.value)
    assert message.startswith(key_path) and str(path) in message and fragment in message


def test_header_value_not_echoed_in_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "services: {v: {base_url: 'http://h', headers: {Authorization: 123456789}}}")
    with pytest.raises(ConfigurationError) as info:
        ServiceRegistry.load(path, environ={})
    assert "123456789" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError) as info:
        ServiceRegistry.load(missing, environ={})
    assert info.value.name == "services_file" and str(missing) in str(info.value) and "cannot be read" in str(info.value)


def test_not_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "services:\n  v: {base_url: [unclosed\n")
    with pytest.raises(ConfigurationError) as info:
        ServiceRegistry.load(path, environ={})
    assert str(path) in str(info.value) and "not valid YAML" in str(info.value) and "line" in str(info.value)


def test_duplicate_keys_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        services:
          v: {base_url: 'http://one'}
          v: {base_url: 'http://two'}
        """,
    )
    with pytest.raises(ConfigurationError, match="duplicate key 'v'"):
        ServiceRegistry.load(path, environ={})


def test_unsafe_yaml_tags_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "services: !!python/object/apply:os.system ['true']")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        ServiceRegistry.load(path, environ={})


def test_empty_services_mapping_is_an_empty_registry(tmp_path: Path) -> None:
    assert len(ServiceRegistry.load(_write(tmp_path, "services:\n"), environ={})) == 0
    assert ServiceRegistry.load(_write(tmp_path, "services: {}"), environ={}).names() == frozenset()


# ---------------------------------------------------------------- shipping to actors


def test_pickle_round_trip() -> None:
    registry = ServiceRegistry.load(EXAMPLE, environ={"CORTX_SERVICE_EXTRA_URL": "http://extra"})
    copy = pickle.loads(pickle.dumps(registry))
    assert copy == registry and copy is not registry
    assert copy.names() == registry.names()
    assert copy.resolve("validation", "/v1/income") == registry.resolve("validation", "/v1/income")
    assert copy.source == registry.source
    assert pickle.loads(pickle.dumps(registry.resolve("ledger"))) == registry.resolve("ledger")


def test_registry_does_not_import_ray() -> None:
    code = "import sys, actors.registry; print('ray' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


import pytest as _pytest


@_pytest.mark.parametrize("endpoint", ["/../../echo/x", "/v1/./x", "/a/%2e%2e/b", "http://elsewhere/x", "//host/x"])
def test_endpoints_cannot_leave_the_base_url(endpoint: str) -> None:
    from actors.registry import ServiceRegistry
    from dsl.errors import ConfigurationError

    registry = ServiceRegistry.from_mapping({"services": {"svc": {"base_url": "http://127.0.0.1:1/svc"}}})
    with _pytest.raises(ConfigurationError):
        registry.resolve("svc", endpoint)
    assert registry.resolve("svc", "/v1/x").url == "http://127.0.0.1:1/svc/v1/x"


def test_auth_and_retry_defaults_are_parsed_and_checked() -> None:
    registry = ServiceRegistry.from_mapping({"services": {"pay": {
        "base_url": "https://pay.example.com",
        "auth": {"header": "X-Api-Key", "secret": "PAY_KEY"},
        "retry": {"max_attempts": 5, "initial_delay_ms": 100},
    }, "plain": {"base_url": "https://plain.example.com"}}})
    call = registry.resolve("pay", "/v1/charge")
    assert call.auth == ("X-Api-Key", None, "PAY_KEY") and "X-Api-Key" not in call.headers
    policy = registry.retry_policy("pay")
    assert policy is not None and (policy.max_attempts, policy.initial_delay_ms) == (5, 100)
    assert registry.retry_policy("plain") is None and registry.retry_policy("nope") is None
    assert registry.resolve("plain", "/x").auth is None


@pytest.mark.parametrize(
    ("spec", "key_path"),
    [
        ({"auth": {"secret": "not a name"}}, "services.pay.auth.secret"),
        ({"auth": {"secret": "K", "header": "Bad Header"}}, "services.pay.auth.header"),
        ({"auth": {"secret": "K", "token": "x"}}, "services.pay.auth.token"),
        ({"auth": "Bearer abc"}, "services.pay.auth"),
        ({"retry": {"max_attempts": 0}}, "services.pay.retry.max_attempts"),
        ({"retry": {"initial_delay_ms": 500, "max_delay_ms": 10}}, "services.pay.retry"),
        ({"retry": 3}, "services.pay.retry"),
    ],
)
def test_bad_auth_or_retry_names_the_key_path(spec: dict, key_path: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ServiceRegistry.from_mapping({"services": {"pay": {"base_url": "https://pay.example.com", **spec}}})
    assert caught.value.name == key_path, caught.value.message()
    assert "abc" not in caught.value.message()  # an auth value is never echoed
