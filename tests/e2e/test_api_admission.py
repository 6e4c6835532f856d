"""Admission control over HTTP (FDD §9.2, §10): queued runs, the queue endpoint, cancelling a queued run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.api_server import EXECUTOR, READER, Api, assert_problem, new_id, running_api, wait_for


@pytest.fixture
def api(
    request: pytest.FixtureRequest, ray_session: None, demo_services: Any, tmp_path_factory: Any,
    fresh_database_url: str,
) -> Iterator[Api]:
    """The API with a limit of 2 running runs, on a database of its own (SQLite, PostgreSQL)."""
    with running_api(
        request, demo_services.url, tmp_path_factory, "admission", database_url=fresh_database_url,
        settings={"max_concurrent_executions": 2},
    ) as api:
        yield api


def slow_pack(pack_id: str, path: str) -> dict[str, Any]:
    return {"id": pack_id, "name": "Slow", "version": "1.0.0",
            "steps": [{"id": "slow", "type": "service_call", "service": "echo", "endpoint": path, "inputs": {}}]}


@pytest.mark.timeout(180)
def test_execute_beyond_the_limit_answers_queued_and_the_queue_is_visible(api: Api, demo_services: Any) -> None:
    from serve_app.demo_services import Fault

    pack_id, path = new_id("slow"), f"/v1/slow-{uuid.uuid4().hex[:8]}"
    demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=2000)])
    try:
        with api.client() as client:
            assert client.post("/v1/packs", json=slow_pack(pack_id, path)).status_code == 201
            answers = [client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id}) for _ in range(4)]
            assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
            bodies = [a.json() for a in answers]
            assert [b["status"] for b in bodies] == ["running", "running", "queued", "queued"], bodies
            assert bodies[0]["started_at"] is not None and bodies[2]["started_at"] is None
            with api.client(READER) as reader:
                depth = reader.get("/v1/workflows/queue")
                assert depth.status_code == 200
                assert depth.json() == {"max_concurrent_executions": 2, "running": 2, "queued": 2}
                listed = reader.get("/v1/workflows/executions", params={"status": "queued"}).json()["items"]
                assert {i["execution_id"] for i in listed} == {bodies[2]["execution_id"], bodies[3]["execution_id"]}
            # cancel one queued run: it ends at once, without running a step
            queued_id = bodies[3]["execution_id"]
            with api.client(EXECUTOR) as executor:
                cancelled = executor.post(f"/v1/workflows/executions/{queued_id}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
            finals = [wait_for(client, b["execution_id"], {"completed", "failed", "cancelled"}, timeout_s=90)
                      for b in bodies]
            assert [f["status"] for f in finals] == ["completed", "completed", "completed", "cancelled"]
            assert finals[2]["started_at"] >= min(finals[0]["completed_at"], finals[1]["completed_at"])
            assert client.get("/v1/workflows/queue").json() == {
                "max_concurrent_executions": 2, "running": 0, "queued": 0}
    finally:
        demo_services.set_faults([])
    assert not [k for k in demo_services.calls()["by_idempotency_key"] if k.startswith(queued_id)]


def test_queue_endpoint_needs_a_key(api: Api) -> None:
    with api.client(None) as anonymous:
        assert_problem(anonymous.get("/v1/workflows/queue"), 401, "unauthorized")
    with api.client(READER) as reader:
        assert reader.get("/v1/workflows/queue").status_code == 200
