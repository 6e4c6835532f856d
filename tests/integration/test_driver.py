"""The Python driver API (``WorkflowClient``) on the session's Ray, SQLite and PostgreSQL.

Deploying packs given every way a script can give them, starting runs of deployed packs,
the step history, listing with cursors, cancelling a run another client started, and the
calls made from inside a running event loop (as a Jupyter cell makes them).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry, with_store

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
LOAN_INPUTS: dict[str, Any] = json.loads((EXAMPLES / "loan-approval.inputs.json").read_text())


def _echo_document(pack_id: str, version: str = "1.0.0", endpoint: str = "/v1/ping") -> dict[str, Any]:
    return {
        "id": pack_id,
        "name": "Echo",
        "version": version,
        "inputs": {"n": {"type": "integer", "default": 1}},
        "outputs": {"n": "${ steps.ping.outputs.body.n }"},
        "steps": [{"id": "ping", "type": "service_call", "service": "echo", "endpoint": endpoint,
                   "inputs": {"n": "${ inputs.n }"}}],
    }


def _echo_model(pack_id: str, version: str = "1.0.0") -> Any:
    from dsl.models import ServiceCallStep, WorkflowPack

    return WorkflowPack(
        id=pack_id,
        name="Echo",
        version=version,
        inputs={"n": {"type": "integer", "default": 1}},
        outputs={"n": "${ steps.ping.outputs.body.n }"},
        steps=[ServiceCallStep(id="ping", type="service_call", service="echo", endpoint="/v1/ping",
                               inputs={"n": "${ inputs.n }"})],
    )


def test_deploy_takes_yaml_text_a_file_a_dict_and_a_model_as_one_version(
    make_client: Any, engine_db: str, demo_services: Any, tmp_path: Path
) -> None:
    import yaml

    from dsl.errors import PackConflictError, PackLoadError, PackValidationError

    client = make_client(engine_db, demo_registry(demo_services.url))
    pack_id = f"drv-{uuid.uuid4().hex[:10]}"
    text = yaml.safe_dump(_echo_document(pack_id), sort_keys=False)
    path = tmp_path / "echo.yaml"
    path.write_text(text)

    first = client.deploy(text)
    assert (first["id"], first["version"], first["created"], first["steps"]) == (pack_id, "1.0.0", True, 1)
    assert first["warnings"] == [] and first["deprecated"] is False
    # The same document, however it is given, is the same version: nothing new is stored.
    for same in (path, str(path), _echo_document(pack_id), _echo_model(pack_id)):
        again = client.deploy(same)
        assert again["created"] is False and again["content_hash"] == first["content_hash"], same

    async def stored(store: Any) -> Any:
        return await store.get_pack(pack_id, "1.0.0")

    record = with_store(engine_db, stored)
    assert record.source_text == text  # the first text deployed is kept

    # A model built in Python deploys on its own too (its JSON is kept as the source).
    model_id = f"drv-{uuid.uuid4().hex[:10]}"
    assert client.deploy(_echo_model(model_id))["created"] is True
    model_record = with_store(engine_db, lambda store: store.get_pack(model_id, "1.0.0"))
    assert json.loads(model_record.source_text) == model_record.document

    with pytest.raises(PackConflictError):
        client.deploy(_echo_document(pack_id, endpoint="/v1/other"))
    with pytest.raises(PackValidationError) as invalid:
        client.deploy({**_echo_document(f"drv-{uuid.uuid4().hex[:10]}"), "steps": [{"id": "x", "type": "teleport"}]})
    assert any(issue.pointer.startswith("/steps/0") for issue in invalid.value.issues)
    with pytest.raises(PackValidationError) as unknown_service:
        client.deploy({**_echo_document(pack_id), "outputs": {}, "steps": [{"id": "x", "type": "service_call", "service": "nope"}]})
    assert "unknown_service" in {issue.code for issue in unknown_service.value.issues}
    with pytest.raises(PackLoadError):
        client.deploy("id: [unclosed\n  name: x\n")


def test_start_a_deployed_pack_by_id_and_version_then_read_its_step_history(
    make_client: Any, engine_db: str, demo_services: Any
) -> None:
    from dsl.errors import PackNotFoundError
    from persistence.history import step_history

    client = make_client(engine_db, demo_registry(demo_services.url))
    pack_id = f"drv-{uuid.uuid4().hex[:10]}"
    client.deploy(_echo_document(pack_id, "1.0.0"))
    client.deploy(_echo_document(pack_id, "1.10.0"))

    latest = client.wait(client.start(workflow_pack_id=pack_id, inputs={"n": 7}), timeout_s=60)
    pinned = client.wait(client.start(workflow_pack_id=pack_id, version="1.0.0"), timeout_s=60)
    assert (latest["status"], latest["version"], latest["outputs"]) == ("completed", "1.10.0", {"n": 7})
    assert (pinned["status"], pinned["version"], pinned["outputs"]) == ("completed", "1.0.0", {"n": 1})

    history = client.steps(latest["execution_id"])
    assert history["execution_id"] == latest["execution_id"] and history["status"] == "completed"
    [attempt] = history["steps"]
    assert (attempt["step_key"], attempt["step_type"], attempt["attempt"], attempt["status"]) == (
        "ping", "service_call", 1, "completed")
    assert attempt["outputs"]["body"]["n"] == 7 and attempt["duration_ms"] >= 0
    assert attempt["idempotency_key"] == f"{latest['execution_id']}/ping"

    async def built(store: Any) -> Any:  # what GET .../steps answers, from the same rows
        record = await store.get_execution(latest["execution_id"])
        return step_history(record, await store.load_checkpoints(record.execution_id))

    assert history == with_store(engine_db, built)

    with pytest.raises(PackNotFoundError):
        client.start(workflow_pack_id=pack_id, version="9.9.9")
    with pytest.raises(PackNotFoundError):
        client.start(workflow_pack_id=f"drv-{uuid.uuid4().hex[:10]}")
    with pytest.raises(ValueError):
        client.start(_echo_document(pack_id), workflow_pack_id=pack_id)
    with pytest.raises(ValueError):
        client.start(_echo_document(pack_id), version="1.0.0")
    from dsl.errors import ExecutionNotFoundError

    with pytest.raises(ExecutionNotFoundError):
        client.steps(str(uuid.uuid4()))


def test_list_filters_and_pages_newest_first(make_client: Any, engine_db: str, demo_services: Any) -> None:
    client = make_client(engine_db, demo_registry(demo_services.url))
    pack_id = f"drv-{uuid.uuid4().hex[:10]}"
    client.deploy(_echo_document(pack_id))
    started = [client.start(workflow_pack_id=pack_id, inputs={"n": n}) for n in range(5)]
    for execution_id in started:
        assert client.wait(execution_id, timeout_s=60)["status"] == "completed"

    seen: list[str] = []
    cursor = None
    while True:
        page = client.list(workflow_pack_id=pack_id, limit=2, cursor=cursor)
        assert len(page["items"]) <= 2
        seen += [item["execution_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == started[::-1]  # newest first, each once
    items = client.list(workflow_pack_id=pack_id, status="completed", limit=200)["items"]
    assert {i["execution_id"] for i in items} == set(started)
    assert all(set(i) >= {"status", "outputs", "created_at", "workflow_pack_id"} for i in items)
    assert client.list(workflow_pack_id=pack_id, status=["failed", "cancelled"])["items"] == []

    for bad in ({"status": "done"}, {"limit": 0}, {"limit": 201}, {"cursor": "not-a-cursor"}):
        with pytest.raises(ValueError):
            client.list(workflow_pack_id=pack_id, **bad)


def test_cancel_and_watch_a_run_another_client_started(make_client: Any, engine_db: str, ray_session: None) -> None:
    from actors.driver import WorkflowClient
    from serve_app.demo_services import Fault, start_in_thread

    with start_in_thread(faults=[Fault("/echo/v1/hang", hang=True)]) as demo:
        starter = make_client(engine_db, demo_registry(demo.url))
        execution_id = starter.start(_echo_document(f"drv-{uuid.uuid4().hex[:10]}", endpoint="/v1/hang"))
        # Another client of the same deployment (same database and Ray namespace) that did
        # not start the run: a new script, or a notebook next to the HTTP API.
        other = WorkflowClient(starter.settings, starter.registry, namespace=starter.namespace)
        deadline = time.monotonic() + 30
        while not other.events(execution_id, 0, 0.5)["events"]:
            assert time.monotonic() < deadline, "no events from the run's host"
        assert other.status(execution_id)["status"] == "running"

        cancelled = other.cancel(execution_id)
        assert cancelled["status"] == "cancelled" and cancelled["execution_id"] == execution_id
        assert starter.status(execution_id)["status"] == "cancelled"
        assert other.cancel(execution_id) == cancelled  # a second cancel changes nothing
        events = [e["type"] for e in other.watch(execution_id, poll_s=0.5)]
        assert events[0] == "execution.started" and events[-1] == "execution.cancelled"


def test_calls_from_inside_a_running_event_loop_as_in_jupyter(
    make_client: Any, engine_sqlite_url: str, demo_services: Any
) -> None:
    client = make_client(engine_sqlite_url, demo_registry(demo_services.url))
    pack_id = f"drv-{uuid.uuid4().hex[:10]}"

    async def cell() -> dict[str, Any]:
        # A notebook cell runs inside the kernel's event loop, where asyncio.run() refuses.
        client.deploy(_echo_document(pack_id))
        execution_id = client.start(workflow_pack_id=pack_id, inputs={"n": 3})
        client.wait(execution_id, timeout_s=60)
        return {"steps": client.steps(execution_id), "list": client.list(workflow_pack_id=pack_id),
                "status": client.status(execution_id)}

    seen = asyncio.run(cell())
    assert seen["status"]["status"] == "completed" and seen["status"]["outputs"] == {"n": 3}
    assert [s["status"] for s in seen["steps"]["steps"]] == ["completed"]
    assert [i["execution_id"] for i in seen["list"]["items"]] == [seen["status"]["execution_id"]]
