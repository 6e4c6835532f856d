"""``deploy/kuberay/rayservice.yaml`` is a KubeRay ``RayService`` that serves the same app as
``serve_app/serve-config.yaml``, with the database URL from a Kubernetes Secret.

No JSON schema of the RayService CRD ships in a pip package, so the checks are structural:
the fields the CRD (ray.io/v1) requires and the types it declares (``rayStartParams`` is a
map of strings, ``serveConfigV2`` a string holding a Serve config), then what matters to the
service, checked with the project's own parsers (settings, API settings, registry).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
DB_URL = re.compile(r"\b(postgres(ql)?|sqlite|mysql)(\+\w+)?://[^\s'\"]", re.IGNORECASE)


def _documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    services = [doc for doc in _documents() if doc.get("kind") == "RayService"]
    assert len(services) == 1
    return services[0]


def _groups(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def _containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [container for group in _groups(service) for container in group["template"]["spec"]["containers"]]


def _serve_config(service: dict[str, Any]) -> dict[str, Any]:
    text = service["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a string in the CRD"
    return dict(yaml.safe_load(text))


def test_every_document_is_a_kubernetes_object() -> None:
    for doc in _documents():
        assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"].get("name"), doc


def test_rayservice_has_the_fields_the_crd_requires(service: dict[str, Any]) -> None:
    assert service["apiVersion"] == "ray.io/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    cluster = service["spec"]["rayClusterConfig"]
    assert isinstance(cluster["enableInTreeAutoscaling"], bool)
    for group in _groups(service):
        params = group.get("rayStartParams", {})
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), params
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["name"] == "ray-head"
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_ray_version_and_image_match_constraints(service: dict[str, Any]) -> None:
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == pinned.group(1)
    base = re.search(r"^FROM (\S+)$", (ROOT / "deploy" / "kuberay" / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None and base.group(1) == f"rayproject/ray:{pinned.group(1)}-py311-cpu"
    assert len({c["image"] for c in _containers(service)}) == 1, "head and workers run one image"


def test_gcs_port_is_not_6379(service: dict[str, Any]) -> None:
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    port = head["rayStartParams"]["port"]
    assert port != "6379"
    gcs = [p for p in head["template"]["spec"]["containers"][0]["ports"] if p["name"] == "gcs-server"]
    assert [p["containerPort"] for p in gcs] == [int(port)]


def test_serve_config_v2_serves_the_same_application_as_serve_config_yaml(service: dict[str, Any]) -> None:
    ours = _serve_config(service)
    reference = yaml.safe_load((ROOT / "serve_app" / "serve-config.yaml").read_text())

    def shape(config: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (app["name"], app["route_prefix"], app["import_path"], sorted(app.get("args", {})),
             sorted(d["name"] for d in app.get("deployments", [])))
            for app in config["applications"]
        ]

    assert shape(ours) == shape(reference)
    module, _, attribute = ours["applications"][0]["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_the_runtime_env_is_valid_for_the_services_own_settings(service: dict[str, Any]) -> None:
    from actors.settings import Settings
    from serve_app.auth import ApiSettings

    env = _serve_config(service)["applications"][0]["runtime_env"]["env_vars"]
    assert all(isinstance(value, str) for value in env.values())
    settings = Settings.from_env({**env, "DATABASE_URL": "postgresql+asyncpg://cortx@db.internal/cortx"})
    assert settings.execution_hosts >= 1
    ApiSettings.from_env(env)


def test_database_url_comes_from_a_secret_in_every_container(service: dict[str, Any]) -> None:
    assert not DB_URL.search(MANIFEST.read_text()), "a literal database URL is written in the manifest"
    env_vars = _serve_config(service)["applications"][0]["runtime_env"]["env_vars"]
    assert "DATABASE_URL" not in env_vars and "CORTX_API_KEYS" not in env_vars
    for container in _containers(service):
        env = {item["name"]: item for item in container["env"]}
        for name in ("DATABASE_URL", "CORTX_API_KEYS"):
            assert "value" not in env[name], f"{name} of {container['name']} is written in the file"
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "cortx-workflow" and ref["key"], ref


def test_the_registry_configmap_loads_and_is_where_the_settings_look(service: dict[str, Any]) -> None:
    from actors.registry import ServiceRegistry

    maps = {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == "ConfigMap"}
    path = _serve_config(service)["applications"][0]["runtime_env"]["env_vars"]["CORTX_SERVICE_REGISTRY"]
    folder, file_name = path.rsplit("/", 1)
    for group in _groups(service):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == folder)
            config_map = maps[volumes[mount["name"]]["configMap"]["name"]]
            registry = ServiceRegistry.from_mapping(yaml.safe_load(config_map["data"][file_name]), file_name)
            assert {"validation", "compliance", "ledger"} <= set(registry.names())


def test_every_pod_runs_serves_data_path_settings(service: dict[str, Any]) -> None:
    # The data path `cortx-workflow serve` sets for its local Ray (serve_app/ingress.py):
    # Ray reads it when the pod's Ray processes start.
    from serve_app.ingress import DATA_PATH_SETTINGS

    for container in _containers(service):
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert {name: env.get(name) for name in DATA_PATH_SETTINGS} == dict(DATA_PATH_SETTINGS), container["name"]


def test_serve_config_yaml_names_every_data_path_setting_with_its_value() -> None:
    # `serve deploy` cannot set them (Ray reads them before the config arrives): its comment
    # tells the operator what to export, and must say what `cortx-workflow serve` sets.
    from serve_app.ingress import DATA_PATH_SETTINGS

    text = (ROOT / "serve_app" / "serve-config.yaml").read_text()
    assert [f"{name}={value}" for name, value in DATA_PATH_SETTINGS.items() if f"{name}={value}" not in text] == []
