"""The ``task`` step on a real local Ray: Python functions as Ray tasks with their resources.

Functions come from ``tests.task_functions`` (allowed by the client's settings), from
``examples.tasks``, or are registered by the test itself (``WorkflowClient.register_task``).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from actors.registry import ServiceRegistry
from dsl.errors import PackValidationError
from tests.conftest import stored_checkpoints, wait_for

pytestmark = pytest.mark.timeout(180)

ALLOWED = ("tests.task_functions", "examples.tasks")
FORBIDDEN_MARKER = Path(tempfile.gettempdir()) / "cortx-task-forbidden-module-imported"
#: A module-level value a registered function reads: it must travel with the function.
OFFSET = 1000


def _pack(*steps: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "tasks", "name": "tasks", "version": "1.0.0", "steps": list(steps), "outputs": outputs or {}}


def _task(step_id: str, function: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "task", "function": function, **fields}


def _client(make_client: Any, database_url: str, **overrides: Any) -> Any:
    settings = {"task_modules": ALLOWED, **overrides}
    return make_client(database_url, ServiceRegistry.from_mapping({"services": {}}), **settings)




def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_task_outputs_flow_between_steps(engine_db: str, make_client: Any) -> None:
    client = _client(make_client, engine_db)
    pack = _pack(
        _task("first", "examples.tasks:add_one", inputs={"n": "${ inputs.n }"}, num_cpus=0.5),
        _task("second", "examples.tasks:add_one", inputs={"n": "${ steps.first.outputs }"}, dependencies=["first"]),
        _task(
            "third", "examples.tasks:add_one", inputs={"n": "${ steps.second.outputs * 10 }"},
            dependencies=["second"], outputs={"value": "${ result }", "even": "${ result % 2 == 0 }"},
        ),
        outputs={"first": "${ steps.first.outputs }", "third": "${ steps.third.outputs }"},
    )
    record = client.run(pack, {"n": 41}, timeout_s=120)
    assert record["status"] == "completed", record
    assert record["outputs"] == {"first": 42, "third": {"value": 431, "even": False}}
    assert record["completed_steps"] == ["first", "second", "third"]
    checkpoints = {cp.step_key: cp for cp in stored_checkpoints(engine_db, record["execution_id"])}
    assert checkpoints["second"].outputs == 43 and checkpoints["second"].step_type == "task"
    assert checkpoints["third"].node_id  # the Ray node the task ran on is recorded


def test_the_task_runs_with_the_resources_it_asked_for(engine_sqlite_url: str, make_client: Any) -> None:
    client = _client(make_client, engine_sqlite_url)
    memory = 64 * 1024 * 1024
    pack = _pack(
        _task("two-cpus", "tests.task_functions:assigned_resources", num_cpus=2, memory=memory),
        _task("fraction", "tests.task_functions:assigned_resources", num_cpus=0.5),
        outputs={"two": "${ steps.two-cpus.outputs }", "fraction": "${ steps.fraction.outputs }"},
    )
    record = client.run(pack, {}, timeout_s=120)
    assert record["status"] == "completed", record
    # What Ray assigned to the worker that ran each function, read inside it.
    assert record["outputs"]["two"]["CPU"] == 2.0
    assert record["outputs"]["two"]["memory"] == float(memory)
    assert record["outputs"]["fraction"]["CPU"] == 0.5 and "memory" not in record["outputs"]["fraction"]


def test_a_task_asking_for_more_cpus_than_the_cluster_has_times_out_clearly(
    engine_sqlite_url: str, make_client: Any
) -> None:
    client = _client(make_client, engine_sqlite_url)
    pack = _pack(
        _task(
            "too-big", "examples.tasks:add_one", inputs={"n": 1}, num_cpus=64, timeout_seconds=2,
            on_error={"retry": {"max_attempts": 1}},
        )
    )
    started = time.monotonic()
    record = client.run(pack, {}, timeout_s=60)
    assert record["status"] == "failed", record
    assert time.monotonic() - started < 30
    detail = record["error_detail"]
    assert detail["step"] == "too-big" and detail["kind"] == "timeout" and detail["attempts"] == 1
    assert "timed out after 2 s" in detail["message"] and "num_cpus=64" in detail["message"]


def test_a_function_outside_the_allowlist_is_refused_at_validation(engine_sqlite_url: str, make_client: Any) -> None:
    client = _client(make_client, engine_sqlite_url)
    pack = _pack(_task("forbidden", "tests.task_functions_forbidden:run"), _task("ok", "examples.tasks:add_one", inputs={"n": 1}))
    with pytest.raises(PackValidationError) as caught:
        client.start(pack, {})
    [issue] = caught.value.issues
    assert issue.code == "task_not_allowed" and issue.pointer == "/steps/0/function"
    assert "tests.task_functions_forbidden:run" in issue.message and "CORTX_TASK_MODULES" in issue.message
    # A prefix is a package boundary: `tests.task_functions` does not allow `tests.task_functions_forbidden`.
    assert "it allows tests.task_functions, examples.tasks" in issue.message


def test_the_worker_refuses_a_module_outside_the_allowlist_before_importing_it(
    engine_sqlite_url: str, make_client: Any
) -> None:
    import ray

    FORBIDDEN_MARKER.unlink(missing_ok=True)
    client = _client(make_client, engine_sqlite_url)
    # Hand the run straight to its host, past the client's validation: the worker must refuse alone.
    execution_id = str(uuid.uuid4())
    host = client._host(execution_id, "shared")
    client._hosts[execution_id] = host
    pack = _pack(_task("forbidden", "tests.task_functions_forbidden:run", on_error={"retry": {"max_attempts": 3}}))
    ray.get(host.submit.remote({"pack": pack, "inputs": {}, "options": {}, "execution_id": execution_id}))
    record = client.wait(execution_id, timeout_s=60)

    assert record["status"] == "failed", record
    detail = record["error_detail"]
    assert detail["kind"] == "task_refused" and detail["rule"] == "module_not_allowed"
    assert detail["function"] == "tests.task_functions_forbidden:run"
    assert detail["attempts"] == 1 and detail["will_retry"] is False  # not retryable
    assert "outside CORTX_TASK_MODULES" in detail["message"]
    [checkpoint] = stored_checkpoints(engine_sqlite_url, execution_id)
    assert checkpoint.node_id  # the refusal happened in a Ray worker
    assert not FORBIDDEN_MARKER.exists(), "the refused module was imported"


def test_an_exception_is_retried_per_policy_then_fails_the_run_with_its_type_and_message(
    engine_db: str, make_client: Any
) -> None:
    client = _client(make_client, engine_db)
    pack = _pack(
        _task(
            "score", "tests.task_functions:always_fails", inputs={"item": "APP-7"},
            on_error={"retry": {"max_attempts": 3, "initial_delay_ms": 10, "backoff": "fixed"}},
        )
    )
    record = client.run(pack, {}, timeout_s=120)
    assert record["status"] == "failed", record
    detail = record["error_detail"]
    assert detail["kind"] == "task_error" and detail["attempts"] == 3
    assert detail["exception_type"] == "ValueError"
    assert detail["exception_message"] == "cannot score item 'APP-7'"
    assert "raised ValueError: cannot score item 'APP-7'" in record["error"]
    assert "always_fails" in detail["traceback"]  # text, not a pickled object
    attempts = sorted((cp.attempt, cp.status, cp.error["kind"]) for cp in stored_checkpoints(engine_db, record["execution_id"]))
    assert attempts == [(1, "failed", "task_error"), (2, "failed", "task_error"), (3, "failed", "task_error")]

    # Not retried when the policy leaves task_error out of retry_on.
    once = client.run(
        _pack(
            _task(
                "score", "tests.task_functions:always_fails", inputs={"item": "APP-8"},
                on_error={"retry": {"max_attempts": 3, "retry_on": ["timeout"]}},
            )
        ),
        {},
        timeout_s=120,
    )
    assert once["status"] == "failed" and once["error_detail"]["attempts"] == 1


def test_a_value_that_is_not_json_fails_the_step(engine_sqlite_url: str, make_client: Any) -> None:
    client = _client(make_client, engine_sqlite_url)
    record = client.run(_pack(_task("bad", "tests.task_functions:returns_a_set")), {}, timeout_s=60)
    assert record["status"] == "failed"
    assert record["error_detail"]["kind"] == "invalid_output" and record["error_detail"]["attempts"] == 1
    assert "set" in record["error_detail"]["message"]


def test_cancel_cancels_the_running_task(engine_sqlite_url: str, make_client: Any, tmp_path: Path) -> None:
    client = _client(make_client, engine_sqlite_url)
    marker = str(tmp_path / "sleeping")
    pack = _pack(
        _task("sleep", "tests.task_functions:sleep_and_mark", inputs={"marker": marker, "seconds": 60}),
        _task("after", "examples.tasks:add_one", inputs={"n": 1}, dependencies=["sleep"]),
    )
    execution_id = client.start(pack, {})
    wait_for(lambda: Path(marker).exists() and Path(marker).read_text() != "", 60, "the task to start")
    pid = int(Path(marker).read_text())
    assert _alive(pid)
    record = client.cancel(execution_id)
    assert record["status"] == "cancelled", record
    assert record["error_detail"]["never_ran"] == ["after"]
    # ray.cancel(force=True) ended the worker that ran the function, long before its 60 s.
    wait_for(lambda: not _alive(pid), 20, f"worker {pid} to end")
    assert not Path(marker + ".done").exists()


def _triple_plus_offset(n: int) -> int:
    return n * 3 + OFFSET


def test_a_driver_registered_function_runs_by_name(engine_sqlite_url: str, make_client: Any) -> None:
    import ray

    client = _client(make_client, engine_sqlite_url, task_modules=())  # no module allowed at all
    pack = _pack(
        _task("triple", "triple", inputs={"n": "${ inputs.n }"}),
        _task("square", "square", inputs={"n": "${ steps.triple.outputs }"}, dependencies=["triple"]),
        outputs={"value": "${ steps.square.outputs }"},
    )
    # Not registered yet: refused before the run starts, naming the function.
    with pytest.raises(PackValidationError) as caught:
        client.start(pack, {"n": 2})
    assert {(i.code, i.pointer) for i in caught.value.issues} == {
        ("task_not_registered", "/steps/0/function"), ("task_not_registered", "/steps/1/function")
    }
    try:
        client.register_task("triple", _triple_plus_offset)  # a module-level function of this test file
        client.register_task("square", lambda n: n * n)
        record = client.run(pack, {"n": 2}, timeout_s=120)
        assert record["status"] == "completed", (record["error"], record["error_detail"])
        assert record["outputs"] == {"value": (2 * 3 + OFFSET) ** 2}

        with pytest.raises(ValueError, match="no ':'"):
            client.register_task("bad:name", lambda: None)
        with pytest.raises(TypeError, match="callable"):
            client.register_task("not-a-function", 42)  # type: ignore[arg-type]
    finally:
        from actors.task_registry import REGISTRY_ACTOR_NAME

        ray.kill(ray.get_actor(REGISTRY_ACTOR_NAME, namespace=client._namespace), no_restart=True)
