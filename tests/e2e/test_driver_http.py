"""A script's WorkflowClient and the HTTP API are two doors to one deployment.

The API runs in uvicorn (``running_api``) on SQLite and on PostgreSQL; a
:class:`actors.WorkflowClient` uses the same database and the same Ray namespace. A pack
deployed or a run started through either door is seen, read, listed and cancelled
through the other, with the same answers (status records, step histories, listing pages
and cursors).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dsl.errors import ExecutionNotFoundError
from tests.conftest import demo_registry
from tests.e2e.api_server import LOAN_INPUTS, ROOT, Api, deploy_yaml, loan_pack, new_id, running_api, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

DONE = {"completed", "failed", "cancelled"}


def _hanging_pack(pack_id: str) -> dict[str, Any]:
    """One echo step whose call never answers (the demo server's ``hang`` fault), so the run stays running."""
    return {"id": pack_id, "name": "Hangs", "version": "1.0.0",
            "steps": [{"id": "wait", "type": "service_call", "service": "echo", "endpoint": "/v1/hang"}]}


@pytest.fixture(scope="module")
def demo() -> Iterator[Any]:
    """Demo services of this module only: ``/echo/v1/hang`` never answers."""
    from serve_app.demo_services import Fault, start_in_thread

    with start_in_thread(faults=[Fault("/echo/v1/hang", hang=True)]) as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def both(request: pytest.FixtureRequest, ray_session: None, demo: Any, tmp_path_factory: Any) -> Iterator[tuple[Api, Any]]:
    """The HTTP API and a WorkflowClient on the same database and Ray namespace."""
    from actors.driver import WorkflowClient
    from actors.settings import Settings

    with running_api(request, demo.url, tmp_path_factory, "driver") as api:
        # The settings running_api gives the API's hosts, so both doors name the same hosts.
        settings = Settings(database_url=api.database_url, execution_hosts=1, workflow_timeout_seconds=120.0,
                            max_concurrent_executions=100_000)
        yield api, WorkflowClient(settings, demo_registry(demo.url), namespace=api.namespace)


def test_a_run_started_by_a_script_is_read_over_http(both: tuple[Api, Any]) -> None:
    api, client = both
    execution_id = client.start(ROOT / "examples" / "loan-approval.yaml", LOAN_INPUTS)
    record = client.wait(execution_id, timeout_s=90)
    assert record["status"] == "completed", record
    with api.client() as http:
        assert http.get(f"/v1/workflows/executions/{execution_id}").json() == client.status(execution_id)
        steps = http.get(f"/v1/workflows/executions/{execution_id}/steps")
        assert steps.status_code == 200 and steps.json() == client.steps(execution_id)
        assert "check-items[2]/validate-item" in {s["step_key"] for s in steps.json()["steps"]}
        listed = http.get("/v1/workflows/executions", params={"workflow_pack_id": "loan-approval", "limit": 200})
        assert execution_id in {item["execution_id"] for item in listed.json()["items"]}


def test_packs_deployed_through_one_door_run_through_the_other(both: tuple[Api, Any]) -> None:
    api, client = both
    by_script, by_http = new_id("drv"), new_id("drv")
    deployed = client.deploy(loan_pack(by_script))
    assert (deployed["id"], deployed["version"], deployed["created"]) == (by_script, "1.0.0", True)
    with api.client() as http:
        assert http.get(f"/v1/packs/{by_script}/versions/1.0.0").json()["content_hash"] == deployed["content_hash"]
        # The same document over HTTP is the same version (200, not created).
        again = deploy_yaml(http, loan_pack(by_script))
        assert again.status_code == 200 and again.json()["created"] is False
        assert deploy_yaml(http, loan_pack(by_http)).status_code == 201
        assert client.deploy(loan_pack(by_http))["created"] is False

        accepted = http.post("/v1/workflows/execute", json={"workflow_pack_id": by_script, "inputs": LOAN_INPUTS})
        assert accepted.status_code == 202, accepted.text
        over_http = accepted.json()["execution_id"]
        from_script = client.start(workflow_pack_id=by_http, version="1.0.0", inputs=LOAN_INPUTS)

        assert client.wait(over_http, timeout_s=90)["status"] == "completed"
        assert wait_for(http, from_script, DONE, timeout_s=90)["status"] == "completed"
        for execution_id in (over_http, from_script):
            assert client.steps(execution_id) == http.get(f"/v1/workflows/executions/{execution_id}/steps").json()
            assert client.status(execution_id) == http.get(f"/v1/workflows/executions/{execution_id}").json()


def test_listing_and_cursors_are_the_same_through_both_doors(both: tuple[Api, Any]) -> None:
    api, client = both
    pack_id = new_id("drv")
    client.deploy(loan_pack(pack_id))
    with api.client() as http:
        started = [client.start(workflow_pack_id=pack_id, inputs=LOAN_INPUTS) for _ in range(2)]
        for _ in range(2):
            accepted = http.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": LOAN_INPUTS})
            started.append(accepted.json()["execution_id"])
        for execution_id in started:
            assert client.wait(execution_id, timeout_s=90)["status"] == "completed"

        first_http = http.get("/v1/workflows/executions", params={"workflow_pack_id": pack_id, "limit": 3}).json()
        first_script = client.list(workflow_pack_id=pack_id, limit=3)
        assert first_script == first_http
        # A cursor from one door pages the other.
        rest_script = client.list(workflow_pack_id=pack_id, limit=3, cursor=first_http["next_cursor"])
        rest_http = http.get("/v1/workflows/executions",
                             params={"workflow_pack_id": pack_id, "limit": 3, "cursor": first_script["next_cursor"]}).json()
        assert rest_script == rest_http and rest_script["next_cursor"] is None
        assert [i["execution_id"] for i in first_script["items"] + rest_script["items"]] == started[::-1]
        completed = client.list(workflow_pack_id=pack_id, status=["completed"], limit=200)
        assert len(completed["items"]) == 4


def test_each_door_cancels_the_runs_the_other_started(both: tuple[Api, Any]) -> None:
    api, client = both
    pack_id = new_id("hang")
    with api.client() as http:
        deployed = http.post("/v1/packs", content=json.dumps(_hanging_pack(pack_id)),
                             headers={"Content-Type": "application/json"})
        assert deployed.status_code == 201, deployed.text
        over_http = http.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id}).json()["execution_id"]
        from_script = client.start(workflow_pack_id=pack_id)
        for execution_id in (over_http, from_script):
            assert wait_for(http, execution_id, {"running"}, timeout_s=30)["status"] == "running"

        running = client.list(workflow_pack_id=pack_id, status="running")["items"]
        assert {i["execution_id"] for i in running} == {over_http, from_script}

        # The script cancels the run the HTTP API started ...
        cancelled = client.cancel(over_http)
        assert cancelled["status"] == "cancelled" and cancelled["execution_id"] == over_http
        assert http.get(f"/v1/workflows/executions/{over_http}").json()["status"] == "cancelled"
        # ... and the HTTP API the run the script started.
        answer = http.post(f"/v1/workflows/executions/{from_script}/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.text
        assert client.wait(from_script, timeout_s=30)["status"] == "cancelled"

        listed = client.list(workflow_pack_id=pack_id, status="cancelled")["items"]
        assert {i["execution_id"] for i in listed} == {over_http, from_script}
        assert all(i["error"] for i in listed)
        history = client.steps(over_http)
        assert history["status"] == "cancelled" and not [s for s in history["steps"] if s["status"] == "completed"]
        assert history == http.get(f"/v1/workflows/executions/{over_http}/steps").json()
    assert client.cancel(over_http) == cancelled  # an ended run: nothing changes
    with pytest.raises(ExecutionNotFoundError):
        client.cancel(str(uuid.uuid4()))
