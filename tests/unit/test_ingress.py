"""``serve_app.ingress.ingress_environment``: what ``cortx-workflow serve`` sets before its Ray starts."""

from __future__ import annotations

from serve_app.ingress import DATA_PATH_SETTINGS, ingress_environment


def test_the_proxy_gets_the_data_path_settings_and_direct_ingress_off() -> None:
    env = ingress_environment(None, {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"})
    assert {name: env[name] for name in DATA_PATH_SETTINGS} == dict(DATA_PATH_SETTINGS)
    assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1" and env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    # Direct ingress is switched off even when the caller's environment turned it on.
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert not any(name.startswith("RAY_SERVE_DIRECT_INGRESS_") for name in env)


def test_a_data_path_setting_the_caller_already_has_is_left_to_the_caller() -> None:
    env = ingress_environment(None, {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"})
    assert "RAY_SERVE_USE_GRPC_BY_DEFAULT" not in env
    assert set(env) >= set(DATA_PATH_SETTINGS) - {"RAY_SERVE_USE_GRPC_BY_DEFAULT"}


def test_direct_ingress_takes_exactly_the_port_without_pauses() -> None:
    env = ingress_environment(8123)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("8123", "8124")
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0" and env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"
    assert {name: env[name] for name in DATA_PATH_SETTINGS} == dict(DATA_PATH_SETTINGS)
