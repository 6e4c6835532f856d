"""The Ray cluster-launcher configs are valid for ``ray up`` and deploy what the service needs.

``cluster.yaml`` (AWS, head and worker node types) and ``deploy/cluster-onprem.yaml`` (the
``local`` provider) are checked against the JSON schema shipped inside the installed Ray
(``ray/autoscaler/ray-schema.json``), then put through the launcher's own preparation and
validation (``prepare_config``, ``validate_config``: what ``ray up`` runs before it starts a
node; it is where the ``local`` provider refuses node types). Then what matters to the
service: the project is installed with ``constraints.txt``, Ray avoids 6379, Serve is
started on the head, and the database URL comes from the environment, never the file.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[2]
CONFIGS = ["cluster.yaml", "deploy/cluster-onprem.yaml"]
#: A database URL with something after the scheme (a host, a path).
DB_URL = re.compile(r"\b(postgres(ql)?|sqlite|mysql)(\+\w+)?://[^\s'\"]", re.IGNORECASE)


def _load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / name).read_text()))


def _commands(config: dict[str, Any]) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [command for key in keys for command in config.get(key) or []]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_matches_rays_schema(name: str) -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _load(name)
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    assert errors == []


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_launchers_own_preparation(name: str) -> None:
    # Ray's private helpers, the ones `ray up` calls (ray.autoscaler._private.commands):
    # defaults merged, node types completed, then the schema and the node-type rules.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_load(name))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_yaml_has_a_head_and_worker_node_types_with_resources() -> None:
    config = _load("cluster.yaml")
    types = config["available_node_types"]
    head, worker = types[config["head_node_type"]], types["worker"]
    assert set(types) == {config["head_node_type"], "worker"}
    assert head["resources"]["CPU"] > 0 and worker["resources"]["CPU"] > 0
    assert head["max_workers"] == 0
    assert 1 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]


def test_cluster_yaml_runs_the_python_and_ray_that_constraints_txt_pins() -> None:
    image = _load("cluster.yaml")["docker"]["image"]
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    assert image == f"rayproject/ray:{pinned.group(1)}-py311-cpu"


@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_the_project_with_constraints(name: str) -> None:
    config = _load(name)
    mounts = config["file_mounts"]
    project = next(remote for remote, local in mounts.items() if local == ".")
    installs = [
        shlex.split(command) for command in config["setup_commands"] if re.search(r"\bpip install\b", command)
    ]
    assert installs, "no pip install in setup_commands"
    words = installs[-1]
    assert words[words.index("-c") + 1] == f"{project}/constraints.txt"
    assert words[-1] == project
    assert (ROOT / "constraints.txt").is_file() and (ROOT / "pyproject.toml").is_file()
    assert ".venv" in config["rsync_exclude"] and "cortx.env" in config["rsync_exclude"]


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_never_uses_port_6379(name: str) -> None:
    config = _load(name)
    assert not re.search(r"(?<!\d)6379(?!\d)", json.dumps(config)), "6379 is Redis's port on our machines"
    head_port = re.search(r"ray start --head --port=(\d+)", " ".join(config["head_start_ray_commands"]))
    assert head_port is not None and head_port.group(1) != "6379"
    assert f"--address=$RAY_HEAD_IP:{head_port.group(1)}" in " ".join(config["worker_start_ray_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_database_url_comes_from_the_environment_not_the_file(name: str) -> None:
    config = _load(name)
    text = (ROOT / name).read_text()
    assert not DB_URL.search(text), "a literal database URL is written in the config"
    assert not re.search(r"DATABASE_URL\s*[=:]\s*['\"]?\w", "\n".join(_commands(config)).replace("^DATABASE_URL=", ""))
    # The env file, made from the environment of whoever runs `ray up`, is copied to each node
    # and read (set -a: exported) before Ray starts, so every Ray process sees DATABASE_URL.
    env_file = next(remote for remote, local in config["file_mounts"].items() if local == "./cortx.env")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(f"set -a && . {env_file} && set +a &&" in c for c in starts), key
    assert any("DATABASE_URL=postgresql" in c and "exit 1" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_the_head_starts_serve_with_the_cli(name: str) -> None:
    from serve_app.cli import _parser

    commands = _load(name)["head_start_ray_commands"]
    ray_start = next(i for i, c in enumerate(commands) if "ray start --head" in c)
    serve = next(i for i, c in enumerate(commands) if "cortx-workflow serve" in c)
    assert serve > ray_start
    words = shlex.split(commands[serve].split("cortx-workflow serve", 1)[1].split(">", 1)[0])
    args = _parser().parse_args(["serve", *words])
    assert (args.address, args.host, args.port) == ("auto", "0.0.0.0", 8000)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ray_start_exports_serves_data_path_settings_before_the_env_file(name: str) -> None:
    # Ray reads them when its processes start: the cluster's proxies and replicas must run the
    # data path `cortx-workflow serve` sets locally (serve_app/ingress.py), and a value in
    # cortx.env (read after) can still override one.
    from serve_app.ingress import DATA_PATH_SETTINGS

    config = _load(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            exports = command.split("&&", 1)[0].split()
            assert exports[0] == "export", command
            assert dict(word.split("=", 1) for word in exports[1:]) == dict(DATA_PATH_SETTINGS), command
            assert command.index("export RAY_SERVE") < command.index(". ~/cortx.env") < command.index("ray start")
