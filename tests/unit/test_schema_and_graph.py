"""The generated pack schema accepts every example and refuses malformed packs; the graph draws them."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from dsl.graph import to_mermaid
from dsl.schema import pack_json_schema
from dsl.validation import load_pack

EXAMPLES = Path(__file__).parents[2] / "examples"
PACKS = [p for p in sorted(EXAMPLES.glob("*.yaml")) if p.name != "services.yaml"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = pack_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", PACKS, ids=lambda p: p.stem)
def test_examples_validate_against_the_schema(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
    assert errors == [], [e.message for e in errors]


def test_schema_refuses_unknown_fields_and_step_types(validator: jsonschema.Draft202012Validator) -> None:
    base = {"id": "p", "name": "p", "version": "1"}
    assert list(validator.iter_errors({**base, "steps": [{"id": "a", "type": "nope"}]}))
    assert list(validator.iter_errors({**base, "steps": [{"id": "a", "type": "service_call", "service": "s", "x": 1}]}))
    assert not list(validator.iter_errors({**base, "steps": [{"id": "a", "type": "service_call", "service": "s"}]}))


@pytest.mark.parametrize("path", PACKS, ids=lambda p: p.stem)
def test_graph_draws_every_step_and_dependency(path: Path) -> None:
    pack = load_pack(path.read_text()).pack
    text = to_mermaid(pack)
    assert text.startswith("flowchart TD\n")
    from dsl.models import all_steps

    for _, step, _ in all_steps(pack):
        assert f"s_{step.id.replace('-', '_')}" in text
        for dependency in step.dependencies:
            assert f"s_{dependency.replace('-', '_')} --> s_{step.id.replace('-', '_')}" in text
