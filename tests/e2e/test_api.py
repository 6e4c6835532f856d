"""The HTTP API over real HTTP: uvicorn on a free loopback port, the session's Ray, real databases.

Fast tier: :func:`serve_app.api.create_app` served by uvicorn in a background thread
(:mod:`tests.e2e.api_server`), once per database (SQLite file, the session's PostgreSQL),
with the demo upstream services and API keys configured. Serve tier: one test runs the
Ray Serve deployment on a free port and goes through Serve's HTTP proxy.

Pack ids carry a random suffix (the PostgreSQL database is shared by the session); tests
that inject faults into the session's demo services clear them in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.settings import Settings
from serve_app.api import create_app
from tests.conftest import demo_registry
from tests.e2e.api_server import (
    ADMIN,
    DEPLOYER,
    EXECUTOR,
    KEYS,
    LOAN_INPUTS,
    PROBLEM,
    READER,
    ROOT,
    Api,
    assert_problem,
    deploy_yaml,
    echo_pack,
    executions_of,
    free_port,
    kill_hosts,
    loan_pack,
    new_id,
    running_api,
    serve_in_thread,
    wait_for,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, ray_session: None, demo_services: Any, tmp_path_factory: Any) -> Iterator[Api]:
    """The API with keys configured, served by uvicorn, on SQLite and on PostgreSQL."""
    with running_api(request, demo_services.url, tmp_path_factory, "api") as api:
        yield api


# --------------------------------------------------------------------------- the main path


@pytest.mark.timeout(120)
def test_deploy_execute_poll_until_completed_and_read_the_step_history(api: Api, demo_services: Any) -> None:
    from serve_app.demo_services import Fault

    pack_id = new_id("loan")
    with api.client() as client:
        deployed = deploy_yaml(client, loan_pack(pack_id))
        assert deployed.status_code == 201, deployed.text
        assert deployed.json() | {"created_at": None, "content_hash": None} == {
            "id": pack_id, "version": "1.0.0", "name": "Loan approval", "deprecated": False, "steps": 10,
            "description": deployed.json()["description"], "created": True, "warnings": [],
            "created_at": None, "content_hash": None,
        }
        assert deployed.headers["location"] == f"/v1/packs/{pack_id}/versions/1.0.0"

        started = time.monotonic()
        demo_services.set_faults([Fault(path="/validation/v1/income", fail_first=1)])  # one retry to see
        try:
            accepted = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": LOAN_INPUTS})
            assert accepted.status_code == 202, accepted.text
            body = accepted.json()
            assert set(body) == {"execution_id", "status", "started_at"} and body["status"] == "running"
            assert str(uuid.UUID(body["execution_id"])) == body["execution_id"] and body["started_at"].endswith("Z")
            assert accepted.headers["location"] == f"/v1/workflows/executions/{body['execution_id']}"
            record = wait_for(client, body["execution_id"], {"completed", "failed", "cancelled"})
        finally:
            demo_services.set_faults([])
        assert record["status"] == "completed", record
        assert record["workflow_pack_id"] == pack_id and record["version"] == "1.0.0" and record["error"] is None
        assert record["outputs"]["items_checked"] == 3 and record["outputs"]["approval_route"] == "manager"
        assert record["outputs"]["first_item"] == {"sku": "LAPTOP-13", "valid": True, "total": 2400.0}
        assert record["outputs"]["summary"] == "Application of Ada Lovelace for 25000: high risk"
        assert record["current_step"] == "record-decision" and record["completed_steps"][-1] == "record-decision"
        assert 0 <= record["duration_ms"] <= (time.monotonic() - started) * 1000 + 1000

        history = client.get(f"/v1/workflows/executions/{body['execution_id']}/steps")
        assert history.status_code == 200
        steps = history.json()
        assert steps["execution_id"] == body["execution_id"] and steps["status"] == "completed"
        keys = [s["step_key"] for s in steps["steps"] if s["status"] == "completed"]
        # the history has every iteration of the loop; completed_steps the pack's steps only
        assert any("/" in key for key in keys)
        assert sorted(k for k in keys if "/" not in k) == sorted(record["completed_steps"])
        income = [s for s in steps["steps"] if s["step_key"] == "income-check"]
        assert [(s["attempt"], s["status"]) for s in income] == [(1, "failed"), (2, "completed")]
        assert income[0]["error"]["kind"] == "http_status" and income[0]["error"]["status"] == 503
        assert income[0]["error"]["will_retry"] is True and income[0]["ended_at"] <= income[1]["started_at"]
        item = next(s for s in steps["steps"] if s["step_key"] == "check-items[2]/validate-item")
        assert item["status"] == "completed" and item["attempt"] == 1 and item["step_type"] == "service_call"
        assert item["outputs"] == {"sku": "SUPPORT-3Y", "valid": True, "total": 350.0} and item["error"] is None
        assert item["started_at"] <= item["ended_at"] and item["duration_ms"] >= 0
        assert item["idempotency_key"] == f"{body['execution_id']}/check-items[2]/validate-item"


@pytest.mark.timeout(60)
def test_deploy_is_immutable_per_version_idempotent_for_the_same_pack(api: Api) -> None:
    pack_id = new_id()
    document = echo_pack(pack_id)
    with api.client(DEPLOYER) as client:
        first = client.post("/v1/packs", json=document)
        assert first.status_code == 201 and first.json()["created"] is True
        again = client.post("/v1/packs", json=document)
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["content_hash"] == first.json()["content_hash"]
        # The same pack as YAML text is the same version too.
        import yaml

        as_yaml = deploy_yaml(client, yaml.safe_dump(document))
        assert as_yaml.status_code == 200, as_yaml.text

        conflict = client.post("/v1/packs", json=echo_pack(pack_id, name="Changed"))
        body = assert_problem(conflict, 409, "pack_conflict")
        assert pack_id in body["detail"]

        detail = client.get(f"/v1/packs/{pack_id}/versions/1.0.0")
        assert detail.status_code == 200
        assert detail.json()["document"]["name"] == "Echo" and json.loads(detail.json()["source"]) == document
        listed = client.get("/v1/packs").json()["packs"]
        assert [p["version"] for p in listed if p["id"] == pack_id] == ["1.0.0"]


@pytest.mark.timeout(90)
def test_execute_without_version_runs_the_latest_not_deprecated_version(api: Api) -> None:
    pack_id = new_id()
    with api.client() as client:
        for version in ("1.9.0", "1.10.0", "1.2.0"):
            assert client.post("/v1/packs", json=echo_pack(pack_id, version)).status_code == 201

        def run(version: str | None = None) -> dict[str, Any]:
            request: dict[str, Any] = {"workflow_pack_id": pack_id, "inputs": {"n": 7}}
            if version:
                request["version"] = version
            accepted = client.post("/v1/workflows/execute", json=request)
            assert accepted.status_code == 202, accepted.text
            return wait_for(client, accepted.json()["execution_id"], {"completed", "failed"})

        latest = run()
        assert latest["version"] == "1.10.0" and latest["outputs"] == {"n": 7}
        versions = client.get(f"/v1/packs/{pack_id}/versions").json()
        assert versions["latest"] == "1.10.0" and [v["version"] for v in versions["versions"]] == ["1.2.0", "1.9.0", "1.10.0"]

        deprecated = client.post(f"/v1/packs/{pack_id}/versions/1.10.0/deprecate")
        assert deprecated.status_code == 200 and deprecated.json()["deprecated"] is True
        assert client.post(f"/v1/packs/{pack_id}/versions/1.10.0/deprecate").json()["deprecated"] is True
        assert run()["version"] == "1.9.0"
        assert run("1.10.0")["version"] == "1.10.0"  # pinned callers still run a deprecated version

        for version in ("1.9.0", "1.2.0"):
            client.post(f"/v1/packs/{pack_id}/versions/{version}/deprecate")
        none_left = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id})
        assert "deprecated" in assert_problem(none_left, 404, "pack_not_found")["detail"]
        assert_problem(client.post(f"/v1/packs/{pack_id}/versions/9.9.9/deprecate"), 404, "pack_not_found")


@pytest.mark.timeout(90)
def test_idempotency_key_returns_the_same_execution_and_starts_one_run(api: Api) -> None:
    pack_id = new_id()
    request = {"workflow_pack_id": pack_id, "inputs": {"n": 3}, "options": {"timeout_seconds": 60, "max_retries": 1}}
    with api.client(EXECUTOR) as client, api.client(DEPLOYER) as deployer:
        assert deployer.post("/v1/packs", json=echo_pack(pack_id)).status_code == 201
        key = f"order-{uuid.uuid4()}"
        first = client.post("/v1/workflows/execute", json=request, headers={"Idempotency-Key": key})
        second = client.post("/v1/workflows/execute", json=request, headers={"Idempotency-Key": key})
        assert first.status_code == 202 and second.status_code == 202, second.text
        execution_id = first.json()["execution_id"]
        assert second.json()["execution_id"] == execution_id
        assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers

        # Concurrent retries of a new key race to insert: all get one execution.
        racing_key = f"race-{uuid.uuid4()}"
        answers: list[httpx.Response] = []

        def send() -> None:
            with api.client(EXECUTOR) as own:
                answers.append(own.post("/v1/workflows/execute", json=request, headers={"Idempotency-Key": racing_key}))

        threads = [threading.Thread(target=send) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [a.status_code for a in answers] == [202] * 5, [a.text for a in answers]
        assert len({a.json()["execution_id"] for a in answers}) == 1

        reused = client.post("/v1/workflows/execute", json={**request, "inputs": {"n": 4}}, headers={"Idempotency-Key": key})
        assert assert_problem(reused, 422, "idempotency_key_reused")["execution_id"] == execution_id
        # The same key is scoped to the API key: another client's key starts its own run.
        other = deployer.post("/v1/workflows/execute", json=request, headers={"Idempotency-Key": key})
        assert_problem(other, 403, "forbidden")
        with api.client(ADMIN) as admin:
            own = admin.post("/v1/workflows/execute", json=request, headers={"Idempotency-Key": key})
        assert own.status_code == 202 and own.json()["execution_id"] != execution_id
        assert wait_for(client, execution_id, {"completed"})["outputs"] == {"n": 3}
        assert_problem(
            client.post("/v1/workflows/execute", json=request, headers={"Idempotency-Key": "x" * 256}),
            400, "idempotency_key_invalid",
        )
    rows = executions_of(api.database_url, pack_id)
    assert len(rows) == 3 and execution_id in rows  # key, racing key, admin's key: one row each


@pytest.mark.timeout(90)
def test_cancel_a_running_execution_then_cancelling_finished_runs_changes_nothing(api: Api, demo_services: Any) -> None:
    from serve_app.demo_services import Fault

    pack_id = new_id("loan")
    path = "/validation/v1/identity"
    with api.client() as client:
        assert deploy_yaml(client, loan_pack(pack_id)).status_code == 201
        before = demo_services.calls()["by_path"].get(f"POST {path}", 0)
        demo_services.set_faults([Fault(path=path, hang=True)])
        try:
            accepted = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": LOAN_INPUTS})
            execution_id = accepted.json()["execution_id"]
            deadline = time.monotonic() + 30
            while demo_services.calls()["by_path"].get(f"POST {path}", 0) <= before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get(f"/v1/workflows/executions/{execution_id}").json()["status"] == "running"
            cancelled = client.post(f"/v1/workflows/executions/{execution_id}/cancel")
        finally:
            demo_services.set_faults([])
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["execution_id"] == execution_id and cancelled.json()["status"] == "cancelled"
        record = client.get(f"/v1/workflows/executions/{execution_id}").json()
        assert record["status"] == "cancelled" and record["completed_at"] is not None
        assert "identity-check" not in record["completed_steps"] and "record-decision" not in record["completed_steps"]
        # A retried cancel is safe: the same record, nothing changed.
        again = client.post(f"/v1/workflows/executions/{execution_id}/cancel")
        assert again.status_code == 200 and again.json() == client.get(f"/v1/workflows/executions/{execution_id}").json()
        assert again.json()["completed_at"] == record["completed_at"]

        done = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": LOAN_INPUTS}).json()
        finished = wait_for(client, done["execution_id"], {"completed", "failed"})
        assert finished["status"] == "completed"
        refused = assert_problem(client.post(f"/v1/workflows/executions/{done['execution_id']}/cancel"), 409, "execution_finished")
        assert refused["execution_status"] == "completed" and refused["execution_id"] == done["execution_id"]
        assert client.get(f"/v1/workflows/executions/{done['execution_id']}").json() == finished
        assert_problem(client.post(f"/v1/workflows/executions/{uuid.uuid4()}/cancel"), 404, "execution_not_found")


@pytest.mark.timeout(180)
def test_concurrent_cancels_of_running_runs_all_end_them_cancelled(api: Api, demo_services: Any) -> None:
    # Several cancels of one run at once: the second used to interrupt the first one's end
    # of the run, which left it `running` with nobody hosting it (2 runs in 20 here).
    from concurrent.futures import ThreadPoolExecutor

    from serve_app.demo_services import Fault

    pack_id = new_id("loan")
    path = "/validation/v1/identity"
    with api.client() as client, ThreadPoolExecutor(max_workers=4) as pool:
        assert deploy_yaml(client, loan_pack(pack_id)).status_code == 201
        demo_services.set_faults([Fault(path=path, hang=True)])
        ids: list[str] = []
        try:
            for _ in range(12):
                before = demo_services.calls()["by_path"].get(f"POST {path}", 0)
                execution_id = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": LOAN_INPUTS}).json()["execution_id"]
                deadline = time.monotonic() + 30
                while demo_services.calls()["by_path"].get(f"POST {path}", 0) <= before and time.monotonic() < deadline:
                    time.sleep(0.02)
                answers = list(pool.map(lambda _: client.post(f"/v1/workflows/executions/{execution_id}/cancel"), range(4)))
                assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
                ids.append(execution_id)
        finally:
            demo_services.set_faults([])
        statuses = {execution_id: wait_for(client, execution_id, {"completed", "failed", "cancelled"}, timeout_s=30)["status"]
                    for execution_id in ids}
    assert set(statuses.values()) == {"cancelled"}, statuses


@pytest.mark.timeout(120)
def test_concurrent_executes_with_slots_free_all_answer_running(api: Api) -> None:
    # An execute whose run a concurrent execute's admission pass started (between its insert
    # and its own pass) used to answer the `queued` it had inserted.
    from concurrent.futures import ThreadPoolExecutor

    pack_id = new_id("burst")
    with api.client() as client, ThreadPoolExecutor(max_workers=16) as pool:
        assert client.post("/v1/packs", json=echo_pack(pack_id)).status_code == 201
        for _ in range(3):
            answers = list(pool.map(
                lambda _: client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": {"n": 1}}),
                range(16),
            ))
            assert [a.status_code for a in answers] == [202] * 16, [a.text for a in answers]
            assert [a.json()["status"] for a in answers] == ["running"] * 16
            assert all(a.json()["started_at"] for a in answers)


# --------------------------------------------------------------------------- error paths


@pytest.mark.timeout(60)
def test_a_long_chain_listed_backwards_deploys_and_runs(api: Api) -> None:
    # 1,500 steps, the first listed waiting on all the others: the dependency checks once
    # recursed a frame per step and answered 500 past Python's recursion limit.
    n = 1500
    steps = [{"id": f"s{i}", "type": "emit", "event_type": "chain.step", **({"dependencies": [f"s{i + 1}"]} if i < n - 1 else {})}
             for i in range(n)]
    pack = {"id": new_id("chain"), "name": "Chain", "version": "1.0.0", "steps": steps,
            "outputs": {"first": "${ steps.s0.outputs }"}}
    with api.client() as client:
        deployed = client.post("/v1/packs", json=pack)
        assert deployed.status_code == 201, deployed.text
        started = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack["id"]})
        assert started.status_code == 202, started.text


def test_invalid_packs_are_422_with_every_issue_pointer_and_line(api: Api) -> None:
    text = "\n".join([
        "id: bad-pack",
        "name: Bad",
        'version: "1.0.0"',
        "colour: blue",
        "steps:",
        "  - id: first",
        "    type: teleport",
        "  - id: second",
        "    type: service_call",
        "    service: validation",
        "    retries: 3",
    ])
    with api.client(DEPLOYER) as client:
        body = assert_problem(deploy_yaml(client, text), 422, "pack_invalid")
        found = {(e["pointer"], e["code"]): e for e in body["errors"]}
        assert set(found) >= {("/colour", "unknown_field"), ("/steps/0/type", "unknown_step_type"),
                              ("/steps/1/retries", "unknown_field")}
        assert found[("/colour", "unknown_field")]["line"] == 4 and found[("/steps/1/retries", "unknown_field")]["line"] == 11
        assert all(e["message"] and "column" in e for e in body["errors"])

        services = echo_pack(new_id())
        services["steps"][0]["service"] = "billing"
        unknown = assert_problem(client.post("/v1/packs", json=services), 422, "pack_invalid")
        assert [(e["pointer"], e["code"]) for e in unknown["errors"]] == [("/steps/0/service", "unknown_service")]

        broken = assert_problem(deploy_yaml(client, "id: x\nsteps: [a, b\n"), 400, "pack_unreadable")
        assert broken["errors"][0]["line"] >= 2
        assert_problem(client.post("/v1/packs", content=b"{\"id\": ", headers={"Content-Type": "application/json"}),
                       400, "pack_unreadable")
        assert_problem(client.post("/v1/packs", content="id: x", headers={"Content-Type": "text/plain"}),
                       415, "unsupported_media_type")
        assert_problem(client.post("/v1/packs", content=b"\xff\xfe", headers={"Content-Type": "application/yaml"}),
                       400, "body_malformed")
        nul = echo_pack(new_id())
        nul["metadata"] = {"note": "a\u0000b"}
        assert assert_problem(client.post("/v1/packs", json=nul), 422, "value_unstorable")["errors"][0]["pointer"] == "/metadata/note"


@pytest.mark.timeout(60)
def test_execute_request_errors_are_problems_with_pointers(api: Api) -> None:
    pack_id = new_id()
    with api.client() as client:
        assert client.post("/v1/packs", json=echo_pack(pack_id)).status_code == 201
        execute = "/v1/workflows/execute"
        malformed = assert_problem(client.post(execute, content=b'{"workflow_pack_id": ', headers={"Content-Type": "application/json"}),
                                   400, "body_malformed")
        assert malformed["errors"][0]["line"] == 1 and malformed["errors"][0]["column"] == 22
        assert_problem(client.post(execute, content=b'{"workflow_pack_id": "x", "inputs": {"a": NaN}}',
                                   headers={"Content-Type": "application/json"}), 400, "body_malformed")
        assert_problem(client.post(execute, content=b"workflow_pack_id=x", headers={"Content-Type": "text/plain"}),
                       415, "unsupported_media_type")
        typed = assert_problem(client.post(execute, json={"workflow_pack_id": pack_id, "options": {"max_retries": "3", "retry": 1}}),
                               422, "request_invalid")
        assert {e["pointer"] for e in typed["errors"]} == {"/options/max_retries", "/options/retry"}
        inputs = assert_problem(client.post(execute, json={"workflow_pack_id": pack_id, "inputs": {"n": "seven"}}),
                                422, "inputs_invalid")
        assert [e["pointer"] for e in inputs["errors"]] == ["/inputs/n"]
        assert_problem(client.post(execute, json={"workflow_pack_id": new_id()}), 404, "pack_not_found")
        assert_problem(client.post(execute, json={"workflow_pack_id": pack_id, "version": "7.0"}), 404, "pack_not_found")
        assert_problem(client.post(execute, content=b"[" * 5000 + b"]" * 5000, headers={"Content-Type": "application/json"}),
                       400, "body_malformed")
        big = b'{"workflow_pack_id": "' + b"x" * (1024 * 1024) + b'"}'
        assert_problem(client.post(execute, content=big, headers={"Content-Type": "application/json"}), 413, "payload_too_large")
        assert_problem(client.post("/v1/packs", content=b"a" * (1024 * 1024 + 1), headers={"Content-Type": "application/yaml"}),
                       413, "payload_too_large")

        assert_problem(client.get(f"/v1/workflows/executions/{uuid.uuid4()}"), 404, "execution_not_found")
        assert_problem(client.get("/v1/workflows/executions/not-a-uuid"), 404, "execution_not_found")
        assert_problem(client.get(f"/v1/workflows/executions/{uuid.uuid4()}/steps"), 404, "execution_not_found")
        assert_problem(client.get(f"/v1/packs/{pack_id}/versions/2.0.0"), 404, "pack_not_found")
        assert_problem(client.get("/v1/packs/a%00b/versions/1.0.0"), 404, "pack_not_found")
        assert_problem(client.get(f"/v1/packs/{pack_id}/versions/1%000"), 404, "pack_not_found")
        assert_problem(client.get(f"/v1/packs/{new_id()}/versions"), 404, "pack_not_found")
        assert_problem(client.get("/v1/nothing-here"), 404, "not_found")
        assert_problem(client.delete(f"/v1/packs/{pack_id}/versions/1.0.0"), 405, "method_not_allowed")


def _answer_head(url: str, sent: bytes, later: bytes = b"") -> bytes:
    """Send raw bytes to the API at ``url`` (then ``later`` after 0.5 s, if any); its answer up to the
    end of the headers. The socket times out after 20 s: an answer that waits for bytes
    never sent fails the test."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(sent)
        if later:
            time.sleep(0.5)
            sock.sendall(later)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    return answer


@pytest.mark.timeout(60)
def test_a_request_without_a_key_is_refused_before_its_body_arrives(api: Api) -> None:
    # A client without a key must not hold a request slot by sending its body slowly: the
    # answer comes while the body is still outstanding.
    head = b"POST /v1/workflows/execute HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
    for authorization in (b"", b"Authorization: Bearer not-a-key\r\n"):
        answer = _answer_head(api.url, head + authorization + b"Content-Length: 1000\r\n\r\n{")
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"application/problem+json" in answer and b"www-authenticate: bearer" in answer.lower()
        assert b"connection: close" in answer.lower()  # the unread body may still be on its way
    # With a key, the same slow start is waited for, and the whole body then gets its answer.
    body = b'{"workflow_pack_id": "no-such-pack"}'
    answer = _answer_head(api.url, head + f"Authorization: Bearer {ADMIN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body[:1], later=body[1:])
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]


@pytest.mark.timeout(60)
def test_an_oversized_body_announced_with_expect_100_continue_is_refused_without_a_continue(api: Api) -> None:
    answer = _answer_head(api.url, b"POST /v1/packs HTTP/1.1\r\nHost: api\r\nContent-Type: application/yaml\r\n"
                          b"Expect: 100-continue\r\n"
                          + f"Authorization: Bearer {ADMIN}\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


@pytest.mark.timeout(60)
def test_no_request_body_produces_a_500(api: Api) -> None:
    bodies: list[bytes] = [
        b"", b"null", b"[]", b"{}", b'"text"', b"1e999", b'{"workflow_pack_id": 1}', b'{"workflow_pack_id": "a\\u0000b"}',
        b'{"workflow_pack_id": "x", "inputs": []}', b'{"workflow_pack_id": "' + b"y" * 5000 + b'"}',
        b'{"workflow_pack_id": "x", "inputs": {"\\ud800": 1}}', b'{"workflow_pack_id": "x", "version": ""}',
        b'{"workflow_pack_id": "x", "options": {"timeout_seconds": -1, "isolation": "nope"}}', b"\x00\x01\x02",
        b'{"workflow_pack_id": "x", "options": {"max_retries": true}}', b'{"a": ' * 100 + b"1" + b"}" * 100,
    ]
    targets = [("/v1/workflows/execute", "application/json"), ("/v1/packs", "application/json"),
               ("/v1/packs", "application/yaml")]
    with api.client() as client:
        for path, kind in targets:
            for body in bodies:
                response = client.post(path, content=body, headers={"Content-Type": kind})
                assert 400 <= response.status_code < 500, (path, kind, body[:60], response.text)
                assert response.headers["content-type"].startswith(PROBLEM), (path, body[:60])


# --------------------------------------------------------------------------- auth


@pytest.mark.timeout(60)
def test_bearer_keys_and_scopes(api: Api) -> None:
    pack_id = new_id()
    status_path = f"/v1/workflows/executions/{uuid.uuid4()}"
    with api.client(None) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        missing = assert_problem(anonymous.get(status_path), 401, "unauthorized")
        assert "Bearer" in missing["detail"]
        assert assert_problem(anonymous.get("/readyz"), 401, "unauthorized")
        response = anonymous.post("/v1/packs", json=echo_pack(pack_id))
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
        basic = anonymous.get(status_path, headers={"Authorization": f"Basic {ADMIN}"})
        assert_problem(basic, 401, "unauthorized")
    with api.client("k-wrong-" + secrets.token_urlsafe(18)) as wrong:
        response = wrong.get(status_path)
        assert_problem(response, 401, "unauthorized")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    with api.client(READER) as reader:
        denied = reader.post("/v1/packs", json=echo_pack(pack_id))
        assert assert_problem(denied, 403, "forbidden")["required_scope"] == "deploy"
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        assert_problem(reader.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id}), 403, "forbidden")
        assert_problem(reader.get(status_path), 404, "execution_not_found")  # authenticated, then not found
        assert reader.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok", "ray": "ok"}}
        assert "/v1/workflows/execute" in reader.get("/openapi.json").json()["paths"]
    with api.client(DEPLOYER) as deployer:
        assert deployer.post("/v1/packs", json=echo_pack(pack_id)).status_code == 201
        assert_problem(deployer.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id}), 403, "forbidden")
    with api.client(EXECUTOR) as executor:
        accepted = executor.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id})
        assert accepted.status_code == 202
        assert_problem(executor.post(f"/v1/packs/{pack_id}/versions/1.0.0/deprecate"), 403, "forbidden")
        assert wait_for(executor, accepted.json()["execution_id"], {"completed"})["outputs"] == {"n": 1}


@pytest.mark.timeout(60)
def test_development_mode_needs_no_key_and_readiness_reports_an_unreachable_database(ray_session: None) -> None:
    from actors.registry import ServiceRegistry
    from dsl.errors import ConfigurationError

    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    app = create_app(Settings(database_url=unreachable), ServiceRegistry({}), namespace=f"dev-{uuid.uuid4().hex[:6]}")
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        ready = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert ready["checks"]["ray"] == "ok" and ready["checks"]["database"].startswith("unreachable")
        down = assert_problem(client.get("/v1/packs"), 503, "configuration_invalid")
        assert "127.0.0.1:1" not in down["detail"] and "nowhere" not in json.dumps(down)
        assert_problem(client.post("/v1/workflows/execute", json={"workflow_pack_id": "x"}), 503, "configuration_invalid")
    with pytest.raises(ConfigurationError, match="STATE_PERSISTENCE_ENABLED"):
        create_app(Settings(database_url="memory://", state_persistence_enabled=False), ServiceRegistry({}))


@pytest.mark.timeout(30)
def test_serve_command_refuses_non_loopback_without_keys_and_never_prints_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from serve_app.cli import main

    monkeypatch.delenv("CORTX_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    assert "loopback" in capsys.readouterr().err
    secret = "short-secret"
    monkeypatch.setenv("CORTX_API_KEYS", f"{secret}:read")
    assert main(["serve", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "CORTX_API_KEYS" in err and secret not in err
    monkeypatch.setenv("CORTX_API_KEYS", f"{'k' * 20}:read,launch")
    assert main(["serve"]) == 1 and "launch" in capsys.readouterr().err
    # direct ingress is set in the environment of the Ray it starts: not possible on a cluster
    monkeypatch.setenv("CORTX_API_KEYS", f"{'k' * 20}:read")
    assert main(["serve", "--address", "127.0.0.1:1", "--ingress", "direct", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "--ingress" in err and "--ingress proxy" in err


# --------------------------------------------------------------------------- Serve tier


@pytest.mark.timeout(120)
def test_execute_and_status_through_the_ray_serve_proxy(ray_session: None, demo_services: Any, tmp_path: Path) -> None:
    from ray import serve

    from serve_app.auth import ApiKeyring, ApiSettings
    from serve_app.deployment import build_application

    namespace = f"serve-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}", execution_hosts=1)
    api_settings = ApiSettings(keyring=ApiKeyring.coerce(KEYS))  # type: ignore[arg-type]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_application(settings, demo_registry(demo_services.url), api_settings=api_settings, namespace=namespace),  # type: ignore[arg-type]
            name=f"cortx-{namespace}",
            route_prefix="/cortx",
        )
        base = f"http://127.0.0.1:{port}/cortx"
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            assert client.get("/readyz").json()["status"] == "ready"
            pack_id = new_id("loan")
            assert deploy_yaml(client, loan_pack(pack_id)).status_code == 201
            accepted = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": LOAN_INPUTS})
            assert accepted.status_code == 202 and accepted.json()["status"] == "running", accepted.text
            record = wait_for(client, accepted.json()["execution_id"], {"completed", "failed", "cancelled"})
            assert record["status"] == "completed" and record["outputs"]["items_checked"] == 3
            assert_problem(httpx.get(f"{base}/v1/packs", timeout=30), 401, "unauthorized")
            # The listing and the event stream (Server-Sent Events) through Serve's proxy.
            listed = client.get("/v1/workflows/executions", params={"workflow_pack_id": pack_id}).json()
            assert [i["execution_id"] for i in listed["items"]] == [record["execution_id"]]
            stream = f"/v1/workflows/executions/{record['execution_id']}/events/stream"
            with client.stream("GET", stream) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                kinds = [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")]
            assert kinds[0] == "execution.started" and kinds[-1] == "execution.completed", kinds
    finally:
        serve.shutdown()
        kill_hosts(namespace)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("ingress", ["direct", "proxy"])
def test_cortx_workflow_serve_resumes_unfinished_runs_serves_http_and_stops_on_ctrl_c(
    demo_services: Any, tmp_path: Path, ingress: str
) -> None:
    """The real command in a new process: its own Ray, resume at start, Serve's proxy (the
    default) or the replica itself (direct ingress) on --port, the body timeout from the
    environment. Direct: SIGINT stops it (exit 0). Proxy: its GCS is killed, and the
    command exits 69 saying why, leaving none of its Ray's processes behind."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import yaml

    from dsl.validation import validate_document
    from persistence import open_store

    database_url = f"sqlite+aiosqlite:///{tmp_path / 'cli-serve.db'}"
    registry = tmp_path / "services.yaml"
    registry.write_text(yaml.safe_dump({"services": {"echo": {"base_url": f"{demo_services.url}/echo"}}}))
    pack = validate_document(echo_pack(new_id())).pack.model_dump(mode="json", by_alias=True, exclude_none=True)
    unfinished = str(uuid.uuid4())

    async def seed() -> None:  # a run left "running" by a cluster that went down
        store = await open_store(database_url)
        try:
            await store.create_execution(execution_id=unfinished, workflow_pack_id=pack["id"], version="1.0.0",
                                         pack_document=pack, inputs={"n": 5}, options={}, status="running")
        finally:
            await store.close()

    asyncio.run(seed())
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "CORTX_SERVICE_REGISTRY": str(registry),
           "CORTX_API_KEYS": f"{ADMIN}:admin", "CORTX_EXECUTION_HOSTS": "1", "CORTX_API_BODY_TIMEOUT_SECONDS": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "serve_app.cli", "serve", "--port", str(port), "--namespace", f"cli-{uuid.uuid4().hex[:6]}"]
    if ingress == "direct":
        command += ["--ingress", "direct"]  # the proxy is the default
    else:
        # Inherited direct-ingress settings are switched off for the proxy: left on, the
        # replica would try to take the proxy's port and the deployment would fail.
        env.update(RAY_SERVE_ENABLE_DIRECT_INGRESS="1", RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(port),
                   RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(port + 1))
    # Started as a shell script starts a background job (`cortx-workflow serve &`): with
    # SIGINT ignored. The command must still stop on it.
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        lines: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        assert any("resumed 1 unfinished run(s)" in line for line in lines), lines
        assert f"listening on http://127.0.0.1:{port}" in lines[-1] and "API keys required" in lines[-1]
        doors = [port]
        if ingress == "direct":
            proxy = re.search(r"direct ingress; Serve's proxy on port (\d+)", lines[-1])
            assert proxy is not None and int(proxy.group(1)) != port, lines[-1]
            doors.append(int(proxy.group(1)))  # the proxy serves the same app: same keys required
        else:
            assert "through Serve's proxy" in lines[-1], lines[-1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN}"},
                          timeout=60) as client:
            record = wait_for(client, unfinished, {"completed", "failed", "cancelled"})
            assert record["status"] == "completed" and record["outputs"] == {"n": 5}
        for door in doors:
            assert_problem(httpx.get(f"http://127.0.0.1:{door}/v1/packs", timeout=30), 401, "unauthorized")
            answer = httpx.get(f"http://127.0.0.1:{door}/v1/workflows/executions/{unfinished}",
                               headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
            assert answer.status_code == 200 and answer.json()["status"] == "completed"
            # A body that never all arrives gets its 408 from the replica, whichever the door.
            slow = _answer_head(f"http://127.0.0.1:{door}", b"POST /v1/workflows/execute HTTP/1.1\r\n"
                                b"Host: api\r\nContent-Type: application/json\r\n"
                                + f"Authorization: Bearer {ADMIN}\r\nContent-Length: 100\r\n\r\n{{".encode())
            assert slow.startswith(b"HTTP/1.1 408"), slow[:300]
        if ingress == "direct":
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=90)
            assert process.returncode == 0, err[-2000:]
            assert "stopping" in out and ADMIN not in out + err
        else:
            import psutil

            # The GCS killed outright: the raylet's agents used to outlive it, orphaned.
            tree = psutil.Process(process.pid).children(recursive=True)
            gcs = [p for p in tree if p.name() == "gcs_server"]
            assert len(gcs) == 1, tree
            gcs[0].kill()
            out, err = process.communicate(timeout=60)
            assert process.returncode == 69, (out[-1000:], err[-2000:])
            assert f"Ray is gone (its gcs_server process (pid {gcs[0].pid}) exited)" in out, out[-1000:]
            assert f"error: the API stopped because Ray is gone: its gcs_server process (pid {gcs[0].pid}) exited" in err
            _, left = psutil.wait_procs(tree, timeout=10)
            assert not left, [(p.pid, p.name()) for p in left]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
