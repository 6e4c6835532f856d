"""Listing executions and a run's events (JSON and Server-Sent Events) over real HTTP.

The API runs as in ``test_api.py`` (uvicorn on a free loopback port, the session's Ray, the
demo services, API keys) on SQLite and on PostgreSQL, with a 1 s keep-alive so streams show
their keep-alive comments quickly. Runs use the echo service on a path of their own, so
faults injected into the session's demo services (delays, failures) touch only them; they
are cleared in ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.e2e.api_server import (
    ADMIN,
    DEPLOYER,
    KEYS,
    READER,
    Api,
    assert_problem,
    echo_pack,
    kill_hosts,
    new_id,
    running_api,
    wait_for,
)

pytestmark = pytest.mark.ray

#: A key with the ``execute`` scope only (no ``read``).
EXECUTE_ONLY = f"k-execonly-{secrets.token_urlsafe(18)}"
DONE = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, ray_session: None, demo_services: Any, tmp_path_factory: Any) -> Iterator[Api]:
    with running_api(request, demo_services.url, tmp_path_factory, "events", keys={**KEYS, EXECUTE_ONLY: ["execute"]},
                     event_keepalive_s=1.0) as api:
        yield api


# --------------------------------------------------------------------------- helpers


async def _forget_stored_events(database_url: str, execution_id: str) -> None:
    """Delete a run's outbox events, as for a run that ran before the outbox existed."""
    from sqlalchemy import delete

    from persistence.models import EXECUTION_EVENTS
    from persistence.store import open_store

    store = await open_store(database_url)
    try:
        async with store.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(delete(EXECUTION_EVENTS).where(EXECUTION_EVENTS.c.execution_id == execution_id))
    finally:
        await store.close()


def path_pack(pack_id: str, endpoint: str) -> dict[str, Any]:
    """The echo pack calling ``/echo<endpoint>``: a path of its own for faults."""
    pack = echo_pack(pack_id)
    pack["steps"][0]["endpoint"] = endpoint
    return pack


def start(client: httpx.Client, pack_id: str, **options: Any) -> str:
    body: dict[str, Any] = {"workflow_pack_id": pack_id, "inputs": {"n": 1}}
    if options:
        body["options"] = options
    accepted = client.post("/v1/workflows/execute", json=body)
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["execution_id"])


def read_stream(client: httpx.Client, path: str, headers: dict[str, str] | None = None,
                read_timeout_s: float = 20) -> tuple[list[dict[str, Any]], list[str]]:
    """Read an SSE answer to its end: ``([{"id", "event", "data"}...], [comment lines])``."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    timeout = httpx.Timeout(read_timeout_s, connect=10)
    with client.stream("GET", path, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
                fields = {}
            elif line.startswith(":"):
                comments.append(line)
            else:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
    for event in events:
        assert event["id"] == event["data"]["seq"] and event["event"] == event["data"]["type"]
    return events, comments


def kinds(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``(type, step_key, attempt)`` of each event (SSE messages or JSON events)."""
    out = []
    for event in events:
        data = event.get("data", event)
        out.append((data["type"], data.get("step_key"), data.get("attempt")))
    return out


def wait_until(condition: Any, timeout_s: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- listing


@pytest.mark.timeout(180)
def test_list_executions_with_each_filter_and_cursor_pages(api: Api, demo_services: Any) -> None:
    from serve_app.demo_services import Fault

    ok, bad, slow = new_id("list-ok"), new_id("list-bad"), new_id("list-slow")
    fail_path, hang_path = f"/v1/fail-{uuid.uuid4().hex[:8]}", f"/v1/hang-{uuid.uuid4().hex[:8]}"
    with api.client() as client:
        for pack in (echo_pack(ok), path_pack(bad, fail_path), path_pack(slow, hang_path)):
            assert client.post("/v1/packs", json=pack).status_code == 201
        demo_services.set_faults([Fault(path=f"/echo{fail_path}", fail_first=1000, status=400),
                                  Fault(path=f"/echo{hang_path}", hang=True)])
        try:
            completed = []
            for _ in range(5):
                completed.append(start(client, ok))
                wait_for(client, completed[-1], DONE)
            failed = start(client, bad, max_retries=0)
            assert wait_for(client, failed, DONE)["status"] == "failed"
            running = start(client, slow)
            wait_until(lambda: demo_services.calls()["by_path"].get(f"POST /echo{hang_path}"), what="the hanging call")

            def page(**params: Any) -> dict[str, Any]:
                answer = client.get("/v1/workflows/executions", params=params)
                assert answer.status_code == 200, answer.text
                return dict(answer.json())

            # Pages of 2 over one pack: newest first, every run once, then no cursor.
            newest_first = list(reversed(completed))
            seen: list[str] = []
            body = page(workflow_pack_id=ok, limit=2)
            sizes = [len(body["items"])]
            seen += [i["execution_id"] for i in body["items"]]
            extra = start(client, ok)  # started while paging: later pages do not shift
            while body["next_cursor"]:
                body = page(workflow_pack_id=ok, limit=2, cursor=body["next_cursor"])
                sizes.append(len(body["items"]))
                seen += [i["execution_id"] for i in body["items"]]
            assert seen == newest_first and sizes == [2, 2, 1] and body["next_cursor"] is None
            first = page(workflow_pack_id=ok, limit=10)["items"]
            assert [i["execution_id"] for i in first] == [extra, *newest_first]
            wait_for(client, extra, DONE)

            # Items are status records plus created_at.
            item = page(workflow_pack_id=ok, status="completed", limit=1)["items"][0]
            assert item == {**client.get(f"/v1/workflows/executions/{item['execution_id']}").json(),
                            "created_at": item["created_at"]}
            assert item["created_at"].endswith("Z") and item["created_at"] <= item["started_at"]

            # Status, alone and repeated, with the pack filter.
            assert [i["execution_id"] for i in page(workflow_pack_id=bad)["items"]] == [failed]
            assert page(workflow_pack_id=bad, status="completed")["items"] == []
            running_now = page(workflow_pack_id=slow, status=["running", "queued"])["items"]
            assert [(i["execution_id"], i["status"]) for i in running_now] == [(running, "running")]
            ended = page(status=["failed", "running"], limit=200)["items"]
            assert {failed, running} <= {i["execution_id"] for i in ended}
            assert {i["status"] for i in ended} <= {"failed", "running"}
            assert all(a["created_at"] >= b["created_at"] for a, b in zip(ended, ended[1:]))

            # Time range: created_after inclusive, created_before exclusive (ISO 8601, any offset).
            times = [i["created_at"] for i in page(workflow_pack_id=ok, limit=10)["items"]]  # extra first
            window = page(workflow_pack_id=ok, created_after=times[4], created_before=times[1])["items"]
            assert [i["execution_id"] for i in window] == newest_first[1:4]
            instant = datetime.fromisoformat(times[4].replace("Z", "+00:00"))
            as_offset = instant.astimezone(timezone(timedelta(hours=2))).isoformat()
            naive = instant.replace(tzinfo=None).isoformat()
            for bound in (as_offset, naive):
                assert len(page(workflow_pack_id=ok, created_after=bound)["items"]) == 5
            assert page(workflow_pack_id=ok, created_after="2999-01-01T00:00:00Z")["items"] == []
            assert len(page(workflow_pack_id=ok, created_before="2999-01-01")["items"]) == 6
        finally:
            demo_services.set_faults([])
        cancelled = client.post(f"/v1/workflows/executions/{running}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert [i["status"] for i in page(workflow_pack_id=slow, status="cancelled")["items"]] == ["cancelled"]

        # Bad values: 422 problems naming the parameter.
        listing = "/v1/workflows/executions"
        bad_values: list[tuple[dict[str, Any], str]] = [
            ({"cursor": "not-a-cursor"}, "query.cursor"),
            ({"cursor": base64.urlsafe_b64encode(b'["c1","2024-01-01T00:00:00+00:00","x"]').decode()}, "query.cursor"),
            ({"status": "finished"}, "query.status.0"),
            ({"created_after": "yesterday"}, "query.created_after"),
            ({"created_before": "2024-13-01T00:00:00Z"}, "query.created_before"),
            ({"created_after": "0001-01-01T00:00:00+05:00"}, "query.created_after"),
            ({"limit": 0}, "query.limit"), ({"limit": 201}, "query.limit"), ({"limit": "ten"}, "query.limit"),
            ({"workflow_pack_id": "a\x00b"}, "query.workflow_pack_id"),
            ({"workflow_pack_id": "x" * 201}, "query.workflow_pack_id"),
            ({"stauts": "failed"}, "query.stauts"),
        ]
        for params, parameter in bad_values:
            problem = assert_problem(client.get(listing, params=params), 422, "request_invalid")
            assert [e["parameter"] for e in problem["errors"]] == [parameter], (params, problem)
        assert page(workflow_pack_id=new_id("none")) == {"items": [], "next_cursor": None}


# --------------------------------------------------------------------------- events


@pytest.mark.timeout(120)
def test_events_of_a_running_run_and_its_stream_until_the_run_ends(api: Api, demo_services: Any) -> None:
    from serve_app.demo_services import Fault

    pack_id, path = new_id("live"), f"/v1/slow-{uuid.uuid4().hex[:8]}"
    with api.client(READER) as reader, api.client() as client:
        assert client.post("/v1/packs", json=path_pack(pack_id, path)).status_code == 201
        demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=2500)])
        try:
            execution_id = start(client, pack_id)
            events_path = f"/v1/workflows/executions/{execution_id}/events"

            def step_started() -> dict[str, Any] | None:
                body = reader.get(events_path).json()
                return body if ("step.started", "ping", 1) in kinds(body["events"]) else None

            running = wait_until(step_started, what="step.started")
            assert running["status"] == "running" and running["source"] == "outbox" and running["done"] is False
            assert running["events"][0]["type"] == "execution.started" and running["events"][0]["seq"] == 1
            assert all(e["at"].endswith("Z") for e in running["events"])
            later = reader.get(events_path, params={"after": 1}).json()
            assert [e["seq"] for e in later["events"]] == [e["seq"] for e in running["events"][1:]]

            began = time.monotonic()
            events, comments = read_stream(reader, f"{events_path}/stream")
            assert time.monotonic() - began < 30
        finally:
            demo_services.set_faults([])
        # The whole run, in order, ending with the final execution event; keep-alives while the call waited.
        assert kinds(events) == [("execution.started", None, None), ("step.started", "ping", 1),
                                 ("step.completed", "ping", 1), ("execution.completed", None, None)]
        assert [e["id"] for e in events] == [1, 2, 3, 4]
        assert events[2]["data"]["duration_ms"] >= 2000 and events[2]["data"]["step_type"] == "service_call"
        assert any(c.startswith(": keep-alive") for c in comments), comments
        assert reader.get(f"/v1/workflows/executions/{execution_id}").json()["status"] == "completed"

        # Finished: the same events from the outbox, done.
        finished = reader.get(events_path).json()
        assert finished["source"] == "outbox" and finished["done"] is True and finished["status"] == "completed"
        assert kinds(finished["events"]) == kinds(events)

        # Resume: Last-Event-ID (or ?after=) sends only what came after; nothing after the last event.
        resumed, _ = read_stream(reader, f"{events_path}/stream", headers={"Last-Event-ID": "2"})
        assert [e["id"] for e in resumed] == [3, 4]
        assert [e["id"] for e in read_stream(reader, f"{events_path}/stream?after=3")[0]] == [4]
        assert [e["id"] for e in read_stream(reader, f"{events_path}/stream?after=1",
                                             headers={"Last-Event-ID": "3"})[0]] == [4]
        assert read_stream(reader, f"{events_path}/stream", headers={"Last-Event-ID": "4"})[0] == []


@pytest.mark.timeout(120)
def test_events_of_a_finished_run_no_host_holds_are_rebuilt_from_checkpoints(api: Api, demo_services: Any) -> None:
    from serve_app.demo_services import Fault

    pack_id, path = new_id("synth"), f"/v1/flaky-{uuid.uuid4().hex[:8]}"
    with api.client() as client:
        assert client.post("/v1/packs", json=path_pack(pack_id, path)).status_code == 201
        demo_services.set_faults([Fault(path=f"/echo{path}", fail_first=1, status=503)])
        try:
            execution_id = start(client, pack_id)
            record = wait_for(client, execution_id, DONE)
        finally:
            demo_services.set_faults([])
        assert record["status"] == "completed"
        kill_hosts(api.namespace)  # the events in memory are gone with the host

        events_path = f"/v1/workflows/executions/{execution_id}/events"
        # The outbox keeps every event, numbered without gaps, whatever happened to the host.
        stored = client.get(events_path).json()
        assert stored["source"] == "outbox" and stored["done"] is True and stored["more"] is False
        assert kinds(stored["events"]) == [
            ("execution.started", None, None), ("step.started", "ping", 1), ("step.failed", "ping", 1),
            ("step.retrying", "ping", 1), ("step.started", "ping", 2), ("step.completed", "ping", 2),
            ("execution.completed", None, None)]
        assert [e["seq"] for e in stored["events"]] == list(range(1, 8))
        assert all(e["event_id"].startswith("evt_") and "synthesized" not in e for e in stored["events"])
        streamed, _ = read_stream(client, f"{events_path}/stream", headers={"Last-Event-ID": "5"})
        assert [e["data"] for e in streamed] == stored["events"][5:]

        # A run without stored events (it ran before the outbox existed): rebuilt from checkpoints.
        asyncio.run(_forget_stored_events(api.database_url, execution_id))
        body = client.get(events_path).json()
        assert body["source"] == "checkpoints" and body["done"] is True and body["status"] == "completed"
        expected = [("execution.started", None, None), ("step.failed", "ping", 1), ("step.completed", "ping", 2),
                    ("execution.completed", None, None)]
        assert kinds(body["events"]) == expected
        assert [e["seq"] for e in body["events"]] == [1, 2, 3, 4] and all(e["synthesized"] for e in body["events"])
        steps = client.get(f"/v1/workflows/executions/{execution_id}/steps").json()["steps"]
        assert body["events"][0]["at"] == record["started_at"] and body["events"][3]["at"] == record["completed_at"]
        assert body["events"][1]["at"] == steps[0]["ended_at"] and "503" in body["events"][1]["error"]
        assert body["events"][2]["duration_ms"] == steps[1]["duration_ms"]
        assert [e["seq"] for e in client.get(events_path, params={"after": 2}).json()["events"]] == [3, 4]

        events, _ = read_stream(client, f"{events_path}/stream")
        assert [e["data"] for e in events] == body["events"]
        resumed, _ = read_stream(client, f"{events_path}/stream", headers={"Last-Event-ID": "2"})
        assert kinds(resumed) == expected[2:] and [e["id"] for e in resumed] == [3, 4]


@pytest.mark.timeout(120)
def test_the_stream_of_a_run_no_host_runs_follows_the_database_until_it_ends(api: Api, demo_services: Any) -> None:
    """A run left ``running`` by a cluster that went down: its stream polls the database."""
    from dsl.validation import validate_document
    from persistence import open_store
    from serve_app.demo_services import Fault

    hang = f"/v1/hang-{uuid.uuid4().hex[:8]}"
    pack = validate_document(path_pack(new_id("orphan"), hang)).pack.model_dump(mode="json", by_alias=True,
                                                                                exclude_none=True)
    execution_id = str(uuid.uuid4())

    async def seed() -> None:
        store = await open_store(api.database_url)
        try:
            await store.create_execution(execution_id=execution_id, workflow_pack_id=pack["id"], version="1.0.0",
                                         pack_document=pack, inputs={"n": 1}, options={}, status="running")
        finally:
            await store.close()

    asyncio.run(seed())
    events_path = f"/v1/workflows/executions/{execution_id}/events"
    result: dict[str, Any] = {}
    with api.client() as client:
        orphan = client.get(events_path).json()
        assert orphan["source"] == "checkpoints" and orphan["done"] is False and orphan["status"] == "running"
        assert kinds(orphan["events"]) == [("execution.started", None, None)]

        def follow() -> None:
            with api.client(READER) as reader:
                result["stream"] = read_stream(reader, f"{events_path}/stream")

        reader_thread = threading.Thread(target=follow, daemon=True)
        reader_thread.start()
        time.sleep(2.5)  # the stream polls the database and sends keep-alives meanwhile
        assert reader_thread.is_alive()
        demo_services.set_faults([Fault(path=f"/echo{hang}", hang=True)])
        try:
            cancelled = client.post(f"/v1/workflows/executions/{execution_id}/cancel")  # hosts it, then cancels
        finally:
            demo_services.set_faults([])
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        reader_thread.join(30)
        assert not reader_thread.is_alive(), "the stream did not end with the run"
    events, comments = result["stream"]
    assert events[0]["event"] == "execution.started" and events[-1]["event"] == "execution.cancelled"
    # Never claimed when the stream began: it waited on the outbox, which the claim then wrote to.
    assert not any(e["data"].get("synthesized") for e in events)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert any(c.startswith(": keep-alive") for c in comments)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("restart", [False, True], ids=["host-gone", "host-restarted"])
def test_the_stream_survives_its_host_going_away_or_restarting(api: Api, demo_services: Any, restart: bool) -> None:
    """Killed for good, the stream goes on from the database (the run ends by a cancel that hosts
    it again); restarted by Ray, the host resumes the run. Either way: every event once, ids
    increasing, the final execution event last."""
    import ray

    from actors.host import shared_host_name
    from serve_app.demo_services import Fault

    pack_id, path = new_id("crash"), f"/v1/slow-{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {}
    with api.client() as client:
        assert client.post("/v1/packs", json=path_pack(pack_id, path)).status_code == 201
        demo_services.set_faults([Fault(path=f"/echo{path}", delay_ms=3000)])
        try:
            execution_id = start(client, pack_id)
            events_path = f"/v1/workflows/executions/{execution_id}/events"

            def follow() -> None:
                with api.client(READER) as reader:
                    result["stream"] = read_stream(reader, f"{events_path}/stream")

            reader_thread = threading.Thread(target=follow, daemon=True)
            reader_thread.start()
            wait_until(lambda: ("step.started", "ping", 1) in kinds(client.get(events_path).json()["events"]),
                       what="step.started")
            time.sleep(0.3)  # the stream has sent it
            ray.kill(ray.get_actor(shared_host_name(0), namespace=api.namespace), no_restart=not restart)
            if not restart:
                time.sleep(2.5)  # the stream follows the database now
                assert reader_thread.is_alive()
                cancelled = client.post(f"/v1/workflows/executions/{execution_id}/cancel")
                assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
            reader_thread.join(60)
            assert not reader_thread.is_alive(), "the stream did not end with the run"
            final = wait_for(client, execution_id, DONE)
        finally:
            demo_services.set_faults([])
    events, _ = result["stream"]
    assert final["status"] == ("completed" if restart else "cancelled")
    assert kinds(events)[:2] == [("execution.started", None, None), ("step.started", "ping", 1)]
    assert events[-1]["event"] == f"execution.{final['status']}"
    # From the outbox: every event once, numbered without gaps across the host's death; the
    # new owner's claim is an event too (attempts it started again are events of their own).
    assert [e["id"] for e in events] == list(range(1, len(events) + 1)), kinds(events)
    if restart:
        assert ("execution.resumed", None, None) in kinds(events)


# --------------------------------------------------------------------------- auth and errors


@pytest.mark.timeout(60)
def test_new_endpoints_need_the_read_scope_and_unknown_runs_are_404(api: Api) -> None:
    pack_id = new_id("auth")
    with api.client() as client:
        assert client.post("/v1/packs", json=echo_pack(pack_id)).status_code == 201
        execution_id = start(client, pack_id)
        wait_for(client, execution_id, DONE)
    paths = ["/v1/workflows/executions", f"/v1/workflows/executions/{execution_id}/events",
             f"/v1/workflows/executions/{execution_id}/events/stream"]
    with api.client(None) as anonymous, api.client("k-wrong-" + secrets.token_urlsafe(18)) as wrong, \
            api.client(EXECUTE_ONLY) as executor:
        for path in paths:
            response = anonymous.get(path)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert_problem(wrong.get(path), 401, "unauthorized")
            denied = assert_problem(executor.get(path), 403, "forbidden")
            assert denied["required_scope"] == "read"
    with api.client(READER) as reader, api.client(DEPLOYER) as deployer:
        assert reader.get(paths[0], params={"workflow_pack_id": pack_id}).json()["items"][0]["execution_id"] == execution_id
        assert deployer.get(paths[1]).json()["done"] is True
        assert read_stream(reader, paths[2])[0][-1]["event"] == "execution.completed"
        for unknown in (str(uuid.uuid4()), "not-a-uuid", "a%00b"):
            assert_problem(reader.get(f"/v1/workflows/executions/{unknown}/events"), 404, "execution_not_found")
            assert_problem(reader.get(f"/v1/workflows/executions/{unknown}/events/stream"), 404, "execution_not_found")
        for value in ("abc", "-1", "1.5", str(2**60)):
            problem = assert_problem(reader.get(paths[2], headers={"Last-Event-ID": value}), 422, "request_invalid")
            assert [e["parameter"] for e in problem["errors"]] == ["header.Last-Event-ID"]
        assert [e["parameter"] for e in assert_problem(reader.get(paths[1], params={"after": -1}), 422,
                                                       "request_invalid")["errors"]] == ["query.after"]
    with api.client(ADMIN) as admin:
        document = admin.get("/openapi.json").json()
        for path in ("/v1/workflows/executions", "/v1/workflows/executions/{execution_id}/events",
                     "/v1/workflows/executions/{execution_id}/events/stream"):
            assert document["paths"][path]["get"]["responses"]["403"]["content"]["application/problem+json"]
        stream = document["paths"]["/v1/workflows/executions/{execution_id}/events/stream"]["get"]
        assert "text/event-stream" in stream["responses"]["200"]["content"]
        assert {p["name"] for p in stream["parameters"]} == {"execution_id", "after", "Last-Event-ID"}
