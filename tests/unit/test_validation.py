"""Pack validation: invalid packs as case files, plus the rules that need code to state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsl.errors import InputValidationError, PackLoadError, PackValidationError
from dsl.validation import load_pack, validate_document, validate_inputs

CASES = Path(__file__).parent / "invalid_packs"
EXAMPLES = Path(__file__).parents[2] / "examples"
EXPECT = re.compile(r"^# expect: (\S+)(?: (\S+))?(?: (\d+))?\s*$", re.M)


def _expectations(text: str) -> list[tuple[str, str | None, int | None]]:
    return [(code, pointer, int(line) if line else None) for code, pointer, line in EXPECT.findall(text)]


@pytest.mark.parametrize("case", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_pack_reports_code_pointer_and_line(case: Path) -> None:
    text = case.read_text()
    expected = _expectations(text)
    assert expected, f"{case.name} has no '# expect:' line"
    with pytest.raises(PackValidationError) as caught:
        load_pack(text, case.name)
    issues = caught.value.issues
    for code, pointer, line in expected:
        matching = [i for i in issues if i.code == code and (pointer in (None, "") or i.pointer == pointer)]
        assert matching, f"expected {code} at {pointer}; got {[(i.code, i.pointer) for i in issues]}"
        if line is not None:
            assert matching[0].line == line, f"{code} at {pointer}: line {matching[0].line}, expected {line}"


def test_every_problem_of_a_stage_is_reported_at_once() -> None:
    text = (CASES / "unknown-field-and-type.yaml").read_text()
    with pytest.raises(PackValidationError) as caught:
        load_pack(text, "x.yaml")
    assert len(caught.value.issues) >= 3
    lines = caught.value.lines()
    assert all(line.startswith("x.yaml:") for line in lines)


MANY_PROBLEMS = """\
id: many
name: Many
version: "1.0.0"
steps:
  - {id: a, type: service_call, service: validation, endpoint: /v1/x, dependencies: [c]}
  - {id: a, type: service_call, service: nope, endpoint: /v1/x}
  - {id: b, type: service_call, service: validation, endpoint: /v1/x, dependencies: [c, ghost]}
  - id: c
    type: service_call
    service: validation
    endpoint: /v1/x
    dependencies: [b]
    inputs: {x: "${ secrets.bad-name }"}
"""


def test_problems_of_different_stages_are_reported_together() -> None:
    with pytest.raises(PackValidationError) as caught:
        load_pack(MANY_PROBLEMS, "many.yaml", services={"validation"})
    found = {(i.code, i.pointer) for i in caught.value.issues}
    assert found >= {
        ("duplicate_id", "/steps/1/id"),
        ("unknown_dependency", "/steps/2/dependencies/1"),
        ("dependency_cycle", "/steps/2/dependencies"),
        ("invalid_secret_name", "/steps/3/inputs/x"),
        ("unknown_service", "/steps/1/service"),
    }, found


def test_no_cycle_is_reported_through_a_duplicated_id() -> None:
    # The graph cannot tell the two 'a' apart: "a -> a" would be an artefact of the duplicate.
    text = MANY_PROBLEMS.replace("dependencies: [c]}", "dependencies: []}").replace("service: nope", "service: validation, dependencies: [a]")
    with pytest.raises(PackValidationError) as caught:
        load_pack(text, "many.yaml", services={"validation"})
    cycles = [i.message for i in caught.value.issues if i.code == "dependency_cycle"]
    assert cycles == ["dependency cycle: b -> c -> b"], cycles


def test_a_cycle_is_found_even_when_a_cycle_through_a_duplicated_id_is_met_first() -> None:
    # Found by fuzzing: the search met s0 -> s0 (two steps named s0) first and never looked
    # at s4 and s5 again.
    text = """\
id: masked
name: masked
version: "1.0.0"
steps:
  - {id: s2, type: service_call, service: ledger, endpoint: /v1/entries}
  - {id: s0, type: service_call, service: ledger, endpoint: /v1/entries, dependencies: [s0, s4]}
  - {id: s4, type: service_call, service: ledger, endpoint: /v1/entries, dependencies: [s5, s2]}
  - {id: s0, type: service_call, service: ledger, endpoint: /v1/entries}
  - {id: s5, type: service_call, service: ledger, endpoint: /v1/entries, dependencies: [s4, s3]}
  - {id: s3, type: service_call, service: ledger, endpoint: /v1/entries, dependencies: [s0]}
  - {id: s2, type: service_call, service: ledger, endpoint: /v1/entries, dependencies: [s5]}
"""
    with pytest.raises(PackValidationError) as caught:
        load_pack(text, "masked.yaml", services={"ledger"})
    cycles = [i.message for i in caught.value.issues if i.code == "dependency_cycle"]
    assert len(cycles) == 1 and re.search(r"cycle: (s4 -> s5 -> s4|s5 -> s4 -> s5)$", cycles[0]), cycles
    assert sorted(i.pointer for i in caught.value.issues if i.code == "duplicate_id") == ["/steps/3/id", "/steps/6/id"]


def test_cycle_message_names_the_path() -> None:
    with pytest.raises(PackValidationError) as caught:
        load_pack((CASES / "two-cycle.yaml").read_text())
    messages = " ".join(i.message for i in caught.value.issues)
    assert re.search(r"cycle: (a -> b -> a|b -> a -> b)", messages), messages


def test_self_dependency_names_the_step() -> None:
    with pytest.raises(PackValidationError) as caught:
        load_pack((CASES / "self-dependency.yaml").read_text())
    (issue,) = [i for i in caught.value.issues if i.code == "dependency_cycle"]
    assert "'b'" in issue.message and "itself" in issue.message


def test_cycle_through_group_is_reported_as_a_cycle() -> None:
    with pytest.raises(PackValidationError) as caught:
        load_pack((CASES / "cycle-through-group.yaml").read_text())
    cycles = [i.message for i in caught.value.issues if i.code == "dependency_cycle"]
    assert cycles and all(name in cycles[0] for name in ("g1", "grp", "after"))


def test_unknown_dependency_suggests_the_close_name() -> None:
    with pytest.raises(PackValidationError) as caught:
        load_pack((CASES / "unknown-dependency.yaml").read_text())
    message = caught.value.issues[0].message
    assert "'valdiate'" in message and "'save'" in message and "did you mean 'validate'" in message


def test_duplicate_id_message_says_duplicate_and_where_first() -> None:
    with pytest.raises(PackValidationError) as caught:
        load_pack((CASES / "duplicate-id-nested.yaml").read_text())
    message = caught.value.issues[0].message
    assert "duplicate" in message and "'notify'" in message and "/steps/0/id" in message


def test_not_yaml_names_line_and_column() -> None:
    with pytest.raises(PackLoadError) as caught:
        load_pack("id: x\nsteps: [\n  - a: b\n", "broken.yaml")
    assert caught.value.line is not None and str(caught.value).startswith("broken.yaml:")


def test_json_syntax_error_names_line() -> None:
    with pytest.raises(PackLoadError) as caught:
        load_pack('{"id": "x",\n "steps": [}', "p.json")
    assert caught.value.line == 2


def test_empty_and_non_mapping_documents() -> None:
    with pytest.raises(PackLoadError):
        load_pack("   \n", "empty.yaml")
    with pytest.raises(PackValidationError) as caught:
        load_pack("- just\n- a list\n", "list.yaml")
    assert caught.value.issues[0].code == "not_a_mapping"


def test_python_and_other_tags_are_refused() -> None:
    for text in ("id: !!python/object/apply:os.system ['echo hi']\n", "id: !custom x\n", "id: !!binary aGk=\n"):
        with pytest.raises(PackValidationError) as caught:
            load_pack(text, "evil.yaml")
        assert caught.value.issues[0].code == "yaml_tag", text


def test_unknown_service_is_reported_when_a_registry_is_given() -> None:
    text = "id: p\nname: p\nversion: '1'\nsteps:\n  - {id: a, type: service_call, service: nope}\n"
    with pytest.raises(PackValidationError) as caught:
        load_pack(text, services={"validation"})
    assert caught.value.issues[0].code == "unknown_service"
    assert load_pack(text).pack.steps[0].id == "a"  # without a registry, not checked


def test_loop_body_outputs_are_not_visible_after_the_loop() -> None:
    pack = {
        "id": "p", "name": "p", "version": "1",
        "outputs": {"x": "${ steps.inner.outputs }"},
        "steps": [{"id": "each", "type": "loop", "collection": "inputs.items",
                   "steps": [{"id": "inner", "type": "service_call", "service": "s"}]}],
    }
    with pytest.raises(PackValidationError) as caught:
        validate_document(pack)
    assert caught.value.issues[0].code == "step_reference_not_ready"


def test_references_through_dependencies_and_groups_are_allowed() -> None:
    pack = {
        "id": "p", "name": "p", "version": "1",
        "outputs": {"a": "${ steps.member.outputs }", "n": "${ length(steps.each.outputs) }"},
        "steps": [
            {"id": "grp", "type": "parallel", "steps": [{"id": "member", "type": "service_call", "service": "s"}]},
            {"id": "each", "type": "loop", "collection": "inputs.items", "dependencies": ["grp"],
             "steps": [{"id": "body", "type": "service_call", "service": "s",
                        "inputs": {"m": "${ steps.member.outputs }", "i": "${ item }"}}]},
        ],
    }
    assert validate_document(pack).pack.id == "p"


def test_example_packs_are_valid_against_their_registry() -> None:
    from actors.registry import ServiceRegistry

    services = ServiceRegistry.load(EXAMPLES / "services.yaml").names()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name == "services.yaml":
            continue
        loaded = load_pack(path.read_text(), str(path), services=services)
        assert loaded.pack.steps


def test_inputs_are_checked_against_the_schema_with_every_violation() -> None:
    loaded = load_pack((EXAMPLES / "loan-approval.yaml").read_text())
    from dsl.errors import InputValidationError

    with pytest.raises(InputValidationError) as caught:
        validate_inputs(loaded.pack, {"applicant": {"id": 7}, "amount": -1})
    pointers = {i.pointer for i in caught.value.issues}
    assert "/amount" in pointers and "/applicant/id" in pointers and "" in pointers  # items missing


def test_shorthand_input_schema_leaves_keys_optional() -> None:
    pack = validate_document(
        {"id": "p", "name": "p", "version": "1", "inputs": {"items": {"type": "array"}},
         "steps": [{"id": "a", "type": "service_call", "service": "s"}]}
    ).pack
    validate_inputs(pack, {})
    with pytest.raises(Exception) as caught:
        validate_inputs(pack, {"items": "no"})
    assert "/items" in str(caught.value)


def test_input_defaults_are_filled_in_at_every_level() -> None:
    pack = validate_document(
        {"id": "p", "name": "p", "version": "1",
         "inputs": {"type": "object", "properties": {
             "country": {"type": "string", "default": "DE"},
             "applicant": {"type": "object", "properties": {"tier": {"type": "string", "default": "basic"}}}}},
         "steps": [{"id": "a", "type": "service_call", "service": "s"}]}
    ).pack
    given = {"applicant": {"name": "x"}}
    filled = validate_inputs(pack, given)
    assert filled == {"country": "DE", "applicant": {"name": "x", "tier": "basic"}}
    assert given == {"applicant": {"name": "x"}}  # the caller's object is not changed
    assert validate_inputs(pack, {"country": "FR"})["country"] == "FR"


def test_steps_that_can_never_run_are_warnings_not_errors() -> None:
    text = """
id: w
name: w
version: "1"
steps:
  - id: gate
    type: condition
    condition: "1 > 2"
    then: [{id: never, type: service_call, service: s}]
    else: [{id: always, type: service_call, service: s}]
  - id: route
    type: switch
    cases:
      - {when: "true", steps: [{id: first, type: service_call, service: s}]}
      - {when: "inputs.x", steps: [{id: shadowed, type: service_call, service: s}]}
    default: [{id: fallback-route, type: service_call, service: s}]
  - id: each
    type: loop
    collection: "[]"
    steps: [{id: body, type: service_call, service: s}]
"""
    loaded = load_pack(text, "w.yaml")
    warned = {w.message.split("'")[1]: w for w in loaded.warnings}
    assert set(warned) == {"never", "shadowed", "fallback-route", "body"}
    assert all(w.severity == "warning" and w.code == "never_runs" and w.line for w in warned.values())
    assert warned["never"].pointer == "/steps/0/then/0"


@pytest.mark.parametrize(
    "text",
    [
        "a0: &a0 [" + ",".join(["lol"] * 9) + "]\n" + "".join(
            f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)
        ),
        "x: " + "[" * 2000 + "]" * 2000 + "\n",
        "id: !!int abc\n",
        "b: &b 1\nc:\n  <<: *b\n",
        "? !!python/name:os.system\n: 1\n",
        "n: " + "9" * 5000 + "\n",
    ],
    ids=["alias-bomb", "deep-nesting", "bad-int-tag", "scalar-merge", "python-key", "huge-int"],
)
def test_hostile_yaml_is_a_clear_error(text: str) -> None:
    with pytest.raises((PackLoadError, PackValidationError)) as caught:
        load_pack(text, "hostile.yaml")
    assert "hostile.yaml" in str(caught.value)


def test_a_device_without_size_is_read_with_a_cap(tmp_path: Path) -> None:
    from dsl.loader import read_text

    with pytest.raises(PackLoadError) as caught:
        read_text("/dev/zero")
    assert "larger than the limit" in str(caught.value)


@pytest.mark.parametrize(
    ("step", "pointer", "needle"),
    [
        ({"id": "c", "type": "condition", "then": []}, "/steps/0/condition", "missing required field 'condition'"),
        ({"id": "c", "type": "condition", "condition": 5}, "/steps/0/condition", "valid string"),
        ({"id": "l", "type": "loop", "collection": "inputs.x", "item_var": "steps",
          "steps": [{"id": "b", "type": "service_call", "service": "s"}]}, "/steps/0", "'steps' is a name"),
        ({"id": "l", "type": "loop", "collection": "inputs.x", "item_var": "x", "index_var": "x",
          "steps": [{"id": "b", "type": "service_call", "service": "s"}]}, "/steps/0", "different names"),
    ],
    ids=["condition-missing", "condition-not-text", "reserved-loop-name", "same-loop-names"],
)
def test_schema_errors_point_at_the_right_field(step: dict, pointer: str, needle: str) -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document({"id": "p", "name": "p", "version": "1", "steps": [step]})
    assert any(i.pointer == pointer and needle in i.message for i in caught.value.issues), caught.value.issues


def test_pack_id_error_states_the_pack_id_rule() -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document({"id": "bad id!", "name": "p", "version": "1",
                           "steps": [{"id": "a", "type": "service_call", "service": "s"}]})
    assert "pack id" in caught.value.issues[0].message and "200" in caught.value.issues[0].message


def test_unstorable_inputs_and_bad_options_are_refused() -> None:
    from dsl.errors import InputValidationError
    from dsl.validation import validate_options

    pack = validate_document({"id": "p", "name": "p", "version": "1",
                              "steps": [{"id": "a", "type": "service_call", "service": "s"}]}).pack
    for bad in ({"a": "x\x00y"}, {"a": float("nan")}, {"a": ["\ud800"]}):
        with pytest.raises(InputValidationError) as caught:
            validate_inputs(pack, bad)
        assert caught.value.issues[0].pointer.startswith("/a")
    for options in ({"max_retries": -1}, {"max_retries": 10**9}, {"timeout_seconds": float("inf")},
                    {"timeout_seconds": 0}, {"retries": 3}):
        with pytest.raises(InputValidationError) as caught:
            validate_options(options)
        assert caught.value.issues[0].pointer.startswith("/options")
    assert validate_options({"timeout_seconds": 5, "max_retries": 0}) == {"timeout_seconds": 5.0, "max_retries": 0}


def test_input_schema_refs_stay_inside_the_pack() -> None:
    def pack(inputs: dict) -> dict:
        return {"id": "p", "name": "p", "version": "1", "inputs": inputs,
                "steps": [{"id": "a", "type": "service_call", "service": "s"}]}

    with pytest.raises(PackValidationError) as caught:
        validate_document(pack({"type": "object", "properties": {"x": {"$ref": "http://127.0.0.1:9/remote.json"}}}))
    assert caught.value.issues[0].code == "remote_ref"
    with pytest.raises(PackValidationError) as caught:
        validate_document(pack({"type": "object", "properties": {"x": {"$ref": "#/nope"}}}))
    assert caught.value.issues[0].code == "unresolved_ref"
    ok = validate_document(pack({"type": "object", "$defs": {"n": {"type": "number"}},
                                 "properties": {"x": {"$ref": "#/$defs/n"}}})).pack
    from dsl.errors import InputValidationError

    with pytest.raises(InputValidationError):
        validate_inputs(ok, {"x": "not a number"})
    assert validate_inputs(ok, {"x": 3}) == {"x": 3}


def _schema_pack(inputs: dict) -> dict:
    return {"id": "p", "name": "p", "version": "1", "inputs": inputs,
            "steps": [{"id": "a", "type": "service_call", "service": "s"}]}


def test_input_patterns_cannot_backtrack_catastrophically() -> None:
    """A ReDoS pattern and input: Python's re would take minutes; RE2 answers at once."""
    import threading

    from dsl.errors import InputValidationError

    pack = validate_document(_schema_pack({
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(x+x+)+y$": {"type": "integer"}},
        "additionalProperties": False,
    })).pack
    evil = "a" * 40 + "!"
    outcome: list[BaseException | dict] = []

    def check() -> None:
        try:
            outcome.append(validate_inputs(pack, {"code": evil, "x" * 40 + "y": 1, "x" * 40: 2}))
        except BaseException as exc:  # noqa: BLE001 - looked at below
            outcome.append(exc)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(10)  # generous: it takes well under a millisecond; with re it would not end
    assert not worker.is_alive(), "input validation backtracked"
    assert isinstance(outcome[0], InputValidationError)
    pointers = {i.pointer for i in outcome[0].issues}
    assert pointers == {"/code", ""}, outcome[0].issues  # the bad code; the extra key
    assert validate_inputs(pack, {"code": "aaa", "xxy": 5}) == {"code": "aaa", "xxy": 5}
    with pytest.raises(InputValidationError):
        validate_inputs(pack, {"xxy": "not an integer"})


def test_patterns_that_need_backtracking_are_refused_with_their_pointer() -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document(_schema_pack({
            "type": "object",
            "properties": {
                "ref": {"type": "string", "pattern": "(ab)\\1"},
                "ahead": {"type": "string", "pattern": "^(?=x)x+$"},
            },
            "patternProperties": {"(?<=a)b": {}},
            "unevaluatedProperties": False,
        }))
    found = {(i.code, i.pointer) for i in caught.value.issues}
    assert found == {
        ("unsupported_pattern", "/inputs/properties/ref/pattern"),
        ("unsupported_pattern", "/inputs/properties/ahead/pattern"),
        ("unsupported_pattern", "/inputs/patternProperties/(?<=a)b"),
        ("unsupported_pattern", "/inputs/unevaluatedProperties"),
    }, found
    assert all("linear time" in i.message or "additionalProperties" in i.message for i in caught.value.issues)


def test_a_pattern_nested_beyond_recursion_is_an_issue_not_a_crash() -> None:
    deep = "(" * 1000 + "a" + ")" * 1000
    with pytest.raises(PackValidationError) as caught:
        validate_document(_schema_pack({"type": "object", "properties": {"x": {"type": "string", "pattern": deep}}}))
    assert caught.value.issues[0].code in {"bad_input_schema", "unsupported_pattern"}
    assert caught.value.issues[0].pointer.startswith("/inputs")


UNIQUE_PACK = {
    "id": "u", "name": "U", "version": "1",
    "inputs": {"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}},
    "steps": [{"id": "a", "type": "service_call", "service": "s", "endpoint": "/x"}],
}


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),  # JSON equality: numbers by value
        ([True, 1], True),  # ... but true is not 1
        ([0, False], True),
        ([None, None], False),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False),  # objects: key order does not matter
        ([{"a": [1, 2]}, {"a": [2, 1]}], True),  # arrays: order matters
        ([[1], [1.0]], False),
        (["1", 1], True),
    ],
)
def test_unique_items_follows_json_equality(items: list, unique: bool) -> None:
    pack = validate_document(UNIQUE_PACK).pack
    if unique:
        assert validate_inputs(pack, {"xs": items}) == {"xs": items}
    else:
        with pytest.raises(InputValidationError) as caught:
            validate_inputs(pack, {"xs": items})
        assert caught.value.issues[0].pointer == "/xs"


def test_unique_items_on_thousands_of_objects_finds_the_one_duplicate() -> None:
    # jsonschema's own check compares unhashable items pairwise (quadratic); ours hashes them.
    pack = validate_document(UNIQUE_PACK).pack
    items = [{"n": i, "tags": [i, str(i)]} for i in range(5_000)]
    assert validate_inputs(pack, {"xs": items})["xs"] == items
    with pytest.raises(InputValidationError) as caught:
        validate_inputs(pack, {"xs": [*items, {"tags": [7, "7"], "n": 7.0}]})
    (issue,) = caught.value.issues
    assert issue.pointer == "/xs" and "non-unique" in issue.message and len(issue.message) < 300


def test_unique_items_keys_are_not_python_int_hashes() -> None:
    # n and n + (2**61 - 1) have the same Python hash: keyed by the ints themselves, a body of
    # them made the set quadratic (20,000 took 10 s). Keys are strings, whose hashes are
    # randomised per process.
    pack = validate_document(UNIQUE_PACK).pack
    colliding = [1 + k * (2**61 - 1) for k in range(20_000)]
    assert hash(colliding[0]) == hash(colliding[1])
    assert validate_inputs(pack, {"xs": colliding})["xs"] == colliding
    with pytest.raises(InputValidationError):
        validate_inputs(pack, {"xs": [*colliding, float(colliding[0])]})
    assert validate_inputs(pack, {"xs": [2**53 + 1, 2.0**53]})  # distinct as JSON numbers


@pytest.mark.parametrize("listed", ["in_run_order", "reversed"])
def test_a_chain_of_thousands_of_steps_is_checked_without_recursion_and_keeps_the_reference_rule(listed: str) -> None:
    # 3,000 steps, each depending on the one before it, three times Python's recursion
    # limit deep; listed in run order or the reverse (the first listed then waits on all the
    # others). The step that runs last may read any step of the chain (each is a transitive
    # dependency); the step that runs first may read none of them.
    n = 3000
    steps: list[dict[str, object]] = []
    for i in range(n):
        step: dict[str, object] = {"id": f"s{i}", "type": "emit", "event_type": "a.b"}
        if i > 0:
            step["dependencies"] = [f"s{i - 1}"]
        steps.append(step)
    first, last = steps[0], steps[-1]
    listing = steps if listed == "in_run_order" else steps[::-1]
    last["data"] = {"seen": "${ steps.s0.outputs }"}
    loaded = validate_document({"id": "chain", "name": "Chain", "version": "1.0.0", "steps": listing}, "chain")
    assert len(loaded.pack.steps) == n

    first["data"] = {"early": "${ steps.s1.outputs }"}
    with pytest.raises(PackValidationError) as caught:
        validate_document({"id": "chain", "name": "Chain", "version": "1.0.1", "steps": listing}, "chain")
    at = 0 if listed == "in_run_order" else n - 1
    assert [(i.code, i.pointer) for i in caught.value.issues] == [("step_reference_not_ready", f"/steps/{at}/data/early")]
