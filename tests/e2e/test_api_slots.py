"""Request slots a client can hold: slow request bodies and open event streams, over real HTTP.

A replica serves at most Serve's ``max_ongoing_requests`` requests at once. A body that
trickles in and an event stream of a long run each hold one of those slots, so both are
bounded (docs/api.md, "Open requests per replica"): the API here runs with a 1 s body
timeout and room for 2 event streams, on SQLite (neither limit touches the database).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.api_server import ADMIN, READER, Api, assert_problem, echo_pack, new_id, running_api

pytestmark = pytest.mark.ray

BODY_TIMEOUT_S = 1.0
MAX_EVENT_STREAMS = 2


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest, ray_session: None, demo_services: Any, tmp_path_factory: Any) -> Iterator[Api]:
    from serve_app.auth import ApiSettings

    database_url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('slots') / 'slots.db'}"
    limits = ApiSettings(body_timeout_s=BODY_TIMEOUT_S, max_event_streams=MAX_EVENT_STREAMS)
    with running_api(request, demo_services.url, tmp_path_factory, "slots", database_url=database_url,
                     api_settings=limits) as api:
        yield api


def _raw_exchange(api: Api, sent: bytes) -> tuple[bytes, float]:
    """Send ``sent`` and never the rest; return the whole answer and the seconds until its
    first byte. The server must close the connection: a read times out after 20 s."""
    parts = urlsplit(api.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        began = time.monotonic()
        sock.sendall(sent)
        answer = sock.recv(65536)
        first_byte_s = time.monotonic() - began
        assert answer, "the server closed without an answer"
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        while chunk := sock.recv(65536):  # until the server closes: the request cannot go on
            answer += chunk
        return answer, first_byte_s


@pytest.mark.timeout(60)
def test_a_body_that_does_not_all_arrive_in_time_is_answered_408_and_the_connection_closed(api: Api) -> None:
    head = (b"POST /v1/workflows/execute HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {ADMIN}\r\n".encode())
    for framing, first_part in (
        (b"Content-Length: 1000\r\n\r\n", b'{"workflow_pack_id": '),
        (b"Transfer-Encoding: chunked\r\n\r\n", b'5\r\n{"wor\r\n'),
    ):
        answer, first_byte_s = _raw_exchange(api, head + framing + first_part)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 408 Request Timeout", answer[:300]
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"content-type: application/problem+json" in headers.lower()
        assert b"connection: close" in headers.lower()
        assert b'"code":"body_timeout"' in body and f"within {BODY_TIMEOUT_S:g} s".encode() in body, body
        assert BODY_TIMEOUT_S * 0.9 <= first_byte_s < BODY_TIMEOUT_S + 5, first_byte_s
    # A body that arrives in time is still read and answered.
    with api.client() as client:
        assert_problem(client.post("/v1/workflows/execute", json={"workflow_pack_id": new_id("none")}), 404,
                       "pack_not_found")


@pytest.mark.timeout(120)
def test_event_streams_beyond_the_replica_cap_get_503_and_a_closed_stream_frees_its_slot(
    api: Api, demo_services: Any
) -> None:
    from serve_app.demo_services import Fault

    pack_id, path = new_id("streams"), f"/v1/slow-{uuid.uuid4().hex[:8]}"
    pack = echo_pack(pack_id)
    pack["steps"][0]["endpoint"] = path
    with api.client() as client:
        assert client.post("/v1/packs", json=pack).status_code == 201
        demo_services.set_faults([Fault(path=f"/echo{path}", hang=True)])
        try:
            accepted = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": {"n": 1}})
            assert accepted.status_code == 202, accepted.text
            execution_id = accepted.json()["execution_id"]
            stream_path = f"/v1/workflows/executions/{execution_id}/events/stream"
            timeout = httpx.Timeout(20, connect=10)
            with api.client(READER) as reader, ExitStack() as open_streams:
                first = open_streams.enter_context(reader.stream("GET", stream_path, timeout=timeout))
                for _ in range(MAX_EVENT_STREAMS - 1):
                    held = open_streams.enter_context(reader.stream("GET", stream_path, timeout=timeout))
                    assert held.status_code == 200
                assert first.status_code == 200
                refused = assert_problem(reader.get(stream_path), 503, "event_streams_exhausted")
                assert f"its {MAX_EVENT_STREAMS} event streams" in refused["detail"]
                assert reader.get(stream_path).headers["retry-after"] == "5"
                # Every other request still gets its answer while the streams are open.
                assert client.get("/healthz").status_code == 200
                assert client.get(f"/v1/workflows/executions/{execution_id}").json()["status"] == "running"
                first.close()  # the client goes away: its slot comes back

                def reopened() -> bool:
                    with reader.stream("GET", stream_path, timeout=timeout) as again:
                        return again.status_code == 200

                deadline = time.monotonic() + 15
                while not reopened():
                    assert time.monotonic() < deadline, "the closed stream's slot never came back"
                    time.sleep(0.2)
            cancelled = client.post(f"/v1/workflows/executions/{execution_id}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        finally:
            demo_services.set_faults([])
