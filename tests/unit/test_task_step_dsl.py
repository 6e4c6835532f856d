"""The ``task`` step in the DSL: its model, function references, the allowlist, schema and graph.

Also the step run without Ray (``ThreadStepRunner``): the same allowlist check, import and
error records as in a Ray worker.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from actors.execution import ExecutionActor
from actors.registry import ServiceRegistry
from actors.runners import ThreadStepRunner
from actors.settings import Settings
from actors.task_step import perform_task, plan_task, step_task_name
from dsl.errors import ConfigurationError, PackValidationError
from dsl.graph import to_mermaid
from dsl.models import TaskStep
from dsl.schema import pack_json_schema
from dsl.task_spec import TaskPolicy, module_allowed, parse_function_ref, parse_task_modules
from dsl.validation import load_pack, validate_document
from persistence.store import MemoryStore

pytestmark = pytest.mark.timeout(60)


def pack(*steps: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "p", "name": "p", "version": "1", "steps": list(steps), "outputs": outputs or {}}


def task(step_id: str = "t", function: str = "examples.tasks:add_one", **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "task", "function": function, **fields}


# --- the model ---------------------------------------------------------------------------------


def test_defaults_resources_and_frozen() -> None:
    step = TaskStep.model_validate(task(inputs={"n": "${ inputs.n }"}))
    assert (step.num_cpus, step.num_gpus, step.memory) == (1.0, 0.0, None)
    big = TaskStep.model_validate(task(num_cpus=0.5, num_gpus=1, memory=2**30, timeout_seconds=5))
    assert (big.num_cpus, big.num_gpus, big.memory, big.timeout_seconds) == (0.5, 1.0, 2**30, 5)
    with pytest.raises(ValidationError):
        step.function = "x:y"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        TaskStep.model_validate(task(service="x"))
    with pytest.raises(ValidationError):
        TaskStep.model_validate(task(num_cpus=float("nan")))


@pytest.mark.parametrize(
    ("text", "module", "name"),
    [("examples.tasks:add_one", "examples.tasks", "add_one"), ("m:f", "m", "f"), ("score-item", None, "score-item"),
     ("scoring.v2", None, "scoring.v2")],
)
def test_function_references(text: str, module: str | None, name: str) -> None:
    ref = parse_function_ref(text)
    assert (ref.module, ref.name, ref.registered) == (module, name, module is None)


@pytest.mark.parametrize(
    "text", ["examples.tasks:_private", "examples/tasks:f", "a.:f", "a:b:c", "class.x:f", "m:f()", "-name", "a b", ":f"]
)
def test_malformed_references_are_refused_naming_both_forms(text: str) -> None:
    with pytest.raises(ValueError, match="registered name"):
        parse_function_ref(text)


def test_allowlist_entries_are_modules_or_package_prefixes() -> None:
    allow = parse_task_modules(" examples.tasks , mycompany ,")
    assert allow == ("examples.tasks", "mycompany")
    assert module_allowed("examples.tasks", allow) and module_allowed("mycompany.tasks.scoring", allow)
    assert not module_allowed("examples.tasks_old", allow) and not module_allowed("examples", allow)
    assert not module_allowed("mycompanyx", allow)
    for bad in ("examples/tasks", "a..b", "import.x", "a.b-c"):
        with pytest.raises(ValueError, match="not a module name"):
            parse_task_modules(bad)


def test_the_setting_is_read_once_and_bad_values_name_the_variable() -> None:
    assert Settings.from_env({}).task_modules == ()
    assert Settings.from_env({"CORTX_TASK_MODULES": "examples.tasks,tests"}).task_modules == ("examples.tasks", "tests")
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"CORTX_TASK_MODULES": "examples.tasks;tests"})
    assert caught.value.name == "CORTX_TASK_MODULES" and "separate entries with commas" in caught.value.message()


# --- validation ----------------------------------------------------------------------------------


def test_validation_checks_templates_and_references_of_inputs() -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document(pack(task("a", inputs={"n": "${ steps.b.outputs }"}), task("b", inputs={"n": "${ 1 + }"})))
    codes = {(i.code, i.pointer) for i in caught.value.issues}
    assert ("step_reference_not_ready", "/steps/0/inputs/n") in codes
    assert any(pointer == "/steps/1/inputs/n" for _, pointer in codes)


def test_secrets_cannot_be_passed_to_a_task_function() -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document(pack(task(inputs={"key": "${ secrets.API_KEY }"})))
    [issue] = caught.value.issues
    assert issue.code == "secret_not_allowed_here" and issue.pointer == "/steps/0/inputs/key"


def test_the_allowlist_is_applied_only_when_validating_against_settings() -> None:
    text = """\
id: p
name: p
version: "1"
steps:
  - id: ok
    type: task
    function: examples.tasks:add_one
  - id: loop
    type: loop
    collection: "[1, 2]"
    steps:
      - id: elsewhere
        type: task
        function: os:system
"""
    load_pack(text, "p.yaml")  # alone: the pack cannot know the deployment's allowlist
    with pytest.raises(PackValidationError) as caught:
        load_pack(text, "p.yaml", tasks=TaskPolicy(("examples.tasks",)))
    [issue] = caught.value.issues
    assert (issue.code, issue.pointer, issue.line) == ("task_not_allowed", "/steps/1/steps/0/function", 14)
    assert issue.message == (
        "step 'elsewhere': function 'os:system' is in module 'os', which CORTX_TASK_MODULES does not allow "
        "(it allows examples.tasks)"
    )


def test_registered_names_are_checked_when_they_are_known() -> None:
    document = pack(task("a", "score-item"), task("b", "examples.tasks:add_one"))
    validate_document(document, tasks=TaskPolicy(("examples.tasks",), registered=None))  # unknown: run time decides
    validate_document(document, tasks=TaskPolicy(("examples.tasks",), registered=frozenset({"score-item"})))
    with pytest.raises(PackValidationError) as caught:
        validate_document(document, tasks=TaskPolicy(("examples.tasks",), registered=frozenset({"other"})))
    [issue] = caught.value.issues
    assert issue.code == "task_not_registered" and "registered: other" in issue.message


def test_schema_and_graph_know_the_task_step() -> None:
    schema = pack_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(pack(task(inputs={"n": 1}, num_cpus=2, memory=1024)))
    assert list(validator.iter_errors(pack(task(num_cpus="many"))))
    graph = to_mermaid(validate_document(pack(task("score", "examples.tasks:score_item"))).pack)
    assert 's_score["score<br/>task examples.tasks:score_item"]' in graph


# --- running without Ray ---------------------------------------------------------------------------


def test_perform_task_refuses_before_importing_and_records_exceptions_as_data() -> None:
    import sys

    refused = perform_task("tests.task_functions_forbidden:run", {}, modules=("tests.task_functions",))
    assert refused["ok"] is False and refused["error"]["kind"] == "task_refused"
    assert refused["error"]["rule"] == "module_not_allowed" and refused["error"]["retryable"] is False
    assert "tests.task_functions_forbidden" not in sys.modules
    failed = perform_task("tests.task_functions:always_fails", {"item": "x"}, modules=("tests.task_functions",))
    error = failed["error"]
    assert (error["kind"], error["exception_type"], error["exception_message"]) == (
        "task_error", "ValueError", "cannot score item 'x'"
    )
    assert isinstance(error["traceback"], str) and error["retryable"] is True
    missing = perform_task("examples.tasks:nothing_here", {}, modules=("examples",))
    assert missing["error"]["kind"] == "task_import" and "no function 'nothing_here'" in missing["error"]["message"]
    wrong_args = perform_task("examples.tasks:add_one", {"m": 1}, modules=("examples",))
    assert wrong_args["error"]["kind"] == "task_error" and wrong_args["error"]["exception_type"] == "TypeError"
    assert perform_task("examples.tasks:add_one", {"n": 1}, modules=("examples",))["value"] == 2
    assert perform_task("score", {"v": (1, 2)}, modules=(), fn=lambda v: v)["value"] == [1, 2]  # via JSON


def test_perform_task_refuses_a_name_an_allowed_module_only_imported() -> None:
    # tests.task_functions does `from pathlib import Path`: Path is callable there, but it is
    # pathlib's, not one of the module's functions (subprocess.run would be the same case).
    refused = perform_task("tests.task_functions:Path", {"args": "/"}, modules=("tests.task_functions",))
    assert refused["ok"] is False and refused["error"]["kind"] == "task_refused"
    assert refused["error"]["rule"] == "not_defined_in_module" and "pathlib" in refused["error"]["message"]
    defined_there = perform_task("tests.task_functions:always_fails", {"item": "y"}, modules=("tests.task_functions",))
    assert defined_there["error"]["kind"] == "task_error"  # its own function still runs


def _run(document: dict[str, Any], inputs: dict[str, Any], runner: ThreadStepRunner) -> tuple[dict[str, Any], list[Any]]:
    async def go() -> tuple[dict[str, Any], list[Any]]:
        store = MemoryStore()
        validate_document(document)
        execution_id = str(uuid.uuid4())
        await store.create_execution(
            execution_id=execution_id, workflow_pack_id="p", version="1", pack_document=document, inputs=inputs, options={}
        )
        actor = ExecutionActor(
            execution_id, store=store, registry=ServiceRegistry.from_mapping({"services": {}}),
            settings=Settings(database_url="memory://"), runner=runner,
        )
        record = await actor.run()
        return record, await store.load_checkpoints(execution_id)

    return asyncio.run(go())


def test_the_thread_runner_runs_task_steps_with_retries_and_registered_functions() -> None:
    calls: list[int] = []

    def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) < 2:
            raise RuntimeError("first call fails")
        return n * 2

    runner = ThreadStepRunner(task_modules=("examples.tasks",), registered_tasks={"flaky": flaky})
    document = pack(
        task("one", inputs={"n": "${ inputs.n }"}),
        task("two", "flaky", inputs={"n": "${ steps.one.outputs }"}, dependencies=["one"],
             on_error={"retry": {"max_attempts": 2, "initial_delay_ms": 1}}, outputs={"doubled": "${ result }"}),
        outputs={"value": "${ steps.two.outputs.doubled }"},
    )
    record, checkpoints = _run(document, {"n": 4}, runner)
    assert record["status"] == "completed", record
    assert record["outputs"] == {"value": 10} and calls == [5, 5]
    two = sorted((cp.attempt, cp.status) for cp in checkpoints if cp.step_key == "two")
    assert two == [(1, "failed"), (2, "completed")]
    first_error = next(cp.error for cp in checkpoints if cp.step_key == "two" and cp.status == "failed")
    assert first_error["exception_type"] == "RuntimeError" and first_error["will_retry"] is True

    refused, _ = _run(pack(task("x", "json:dumps", inputs={"obj": 1})), {}, runner)
    assert refused["status"] == "failed" and refused["error_detail"]["kind"] == "task_refused"
    assert refused["error_detail"]["attempts"] == 1  # never retried
    unknown, _ = _run(pack(task("x", "nobody-registered-this")), {}, runner)
    assert unknown["error_detail"]["kind"] == "task_not_registered"


def test_deploying_a_pack_applies_the_allowlist() -> None:
    """What ``POST /v1/packs`` does with the deployment's ``CORTX_TASK_MODULES``."""
    import json

    from persistence.packs import deploy_pack

    text = json.dumps(pack(task("t", "examples.tasks:add_one", inputs={"n": 1})))
    with pytest.raises(PackValidationError) as caught:
        asyncio.run(deploy_pack(MemoryStore(), text, "json", None, TaskPolicy(("tests.task_functions",))))
    assert [(i.code, i.pointer) for i in caught.value.issues] == [("task_not_allowed", "/steps/0/function")]
    deployed = asyncio.run(deploy_pack(MemoryStore(), text, "json", None, TaskPolicy(("examples",))))
    assert deployed.created


def test_step_task_names_have_the_cardinality_of_the_pack_not_of_runs_or_items() -> None:
    # Ray keeps a metric series per task name for ever: a name per run, attempt or loop item
    # grew the host by about 25 KB per step attempt.
    plan = plan_task(TaskStep.model_validate(task("charge")), lambda field: {"n": 1})
    names = {
        plan.request(
            execution_id=str(uuid.uuid4()), step_key=f"loop[{i}]/retry[{j}]/charge", attempt=attempt, idempotency_key="k"
        ).ray_options()["name"]
        for i in (0, 7, 12345)
        for j in (0, 3)
        for attempt in (1, 2)
    }
    assert names == {"step loop[*]/retry[*]/charge"}
    assert step_task_name("validate") == "step validate"
    # a step id that merely contains brackets without digits is left as written
    assert step_task_name("loop[*]/x") == "step loop[*]/x"
