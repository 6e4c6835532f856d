"""cluster.yaml is a valid Ray cluster-launcher config (checked against Ray's own schema)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).parents[2]


def test_cluster_yaml_matches_rays_schema() -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    assert errors == []
    assert config["head_node_type"] in config["available_node_types"]
    assert any("constraints.txt" in command for command in config["setup_commands"])
