"""call_http over real sockets: the demo services, plus a tiny keep-alive server that counts connections."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actors import http_call
from actors.http_call import call_http, close_client
from serve_app.demo_services import DemoServer, Fault, start_in_thread

SECRET = "Bearer sk-live-0123456789abcdef"


class _RawServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with Content-Length, so connections stay open between requests."""

    protocol_version = "HTTP/1.1"
    server: _RawServer

    def setup(self) -> None:  # once per accepted connection
        with self.server.lock:
            self.server.connections += 1
        super().setup()

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        if self.path == "/text":
            self._reply(200, b"plain words, not JSON", "text/plain")
        elif self.path == "/json":
            self._reply(200, b'{"n": 1, "items": [1, 2]}', "application/json")
        elif self.path == "/mislabelled":
            self._reply(200, b'{"n": 2}', "text/plain")
        elif self.path == "/empty":
            self.send_response(204)
            self.end_headers()
        elif self.path == "/big-error":
            self._reply(500, b"x" * 2000, "text/plain")
        elif self.path == "/retry-date":
            when = email.utils.formatdate(time.time() + 30, usegmt=True)
            self._reply(503, b"{}", "application/json", Retry_After=when)
        elif self.path == "/received":
            info = {"method": self.command, "body": received.decode(), "content_length": self.headers.get("Content-Length")}
            self._reply(200, json.dumps(info).encode(), "application/json")
        elif self.path == "/drop":
            self.close_connection = True  # no answer at all
        else:
            self._reply(404, b"no such path", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = _route


@pytest.fixture(scope="module")
def raw() -> Iterator[_RawServer]:
    server = _RawServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServer]:
    with start_in_thread() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_client() -> Iterator[None]:
    close_client()
    yield
    close_client()


@pytest.fixture
def clean_demo(demo: DemoServer) -> DemoServer:
    demo.set_faults([])
    demo.reset()
    return demo


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- success


def test_success_json(clean_demo: DemoServer) -> None:
    out = call_http(
        method="post",
        url=clean_demo.url + "/compliance/v1/check",
        json_body={"amount": 20_000, "country": "GB"},
    )
    assert out["ok"] is True and out["status"] == 200
    assert out["body"] == {"approved": True, "risk": "high"}
    assert isinstance(out["elapsed_ms"], float) and 0 < out["elapsed_ms"] < 5000
    assert set(out) == {"ok", "status", "body", "elapsed_ms"}


def test_success_text_and_empty_bodies(raw: _RawServer) -> None:
    assert call_http(method="GET", url=raw.url + "/text")["body"] == "plain words, not JSON"
    assert call_http(method="GET", url=raw.url + "/json")["body"] == {"n": 1, "items": [1, 2]}
    # JSON is recognised by content, not by the Content-Type label.
    assert call_http(method="GET", url=raw.url + "/mislabelled")["body"] == {"n": 2}
    empty = call_http(method="DELETE", url=raw.url + "/empty")
    assert empty["ok"] is True and empty["status"] == 204 and empty["body"] is None


def test_get_sends_no_body_and_post_sends_json(raw: _RawServer) -> None:
    got = call_http(method="GET", url=raw.url + "/received", json_body={"ignored": True})["body"]
    assert got["body"] == "" and got["content_length"] is None
    posted = call_http(method="PUT", url=raw.url + "/received", json_body={"a": [1, "é"]})["body"]
    assert posted["method"] == "PUT" and json.loads(posted["body"]) == {"a": [1, "é"]}
    bare = call_http(method="POST", url=raw.url + "/received")["body"]
    assert bare["body"] == ""


def test_idempotency_key_reaches_server(clean_demo: DemoServer) -> None:
    for _ in range(2):
        out = call_http(
            method="POST",
            url=clean_demo.url + "/ledger/v1/entries",
            json_body={"amount": 5},
            headers={"Idempotency-Key": "overridden", "X-Trace": "t1"},
            idempotency_key="run-7:post-ledger",
        )
        assert out["ok"]
    calls = clean_demo.calls()
    assert calls["by_idempotency_key"] == {"run-7:post-ledger": 2}
    assert calls["by_path"] == {"POST /ledger/v1/entries": 2}


# ---------------------------------------------------------------- HTTP status failures


def test_503_is_retryable_with_status_and_excerpt(clean_demo: DemoServer) -> None:
    clean_demo.set_faults([Fault("/validation/v1/income", fail_first=1, status=503)])
    url = clean_demo.url + "/validation/v1/income"
    out = call_http(method="POST", url=url, json_body={"applicant": {"income": 1}, "amount": 1})
    assert out["ok"] is False
    err = out["error"]
    assert err["kind"] == "http_status" and err["status"] == 503 and err["retryable"] is True
    assert err["message"] == f"HTTP 503 from POST {url}"
    assert json.loads(err["body_excerpt"]) == {"error": "injected failure", "call": 1}
    assert err["retry_after_s"] is None
    assert out["elapsed_ms"] >= 0
    # The next call goes through.
    assert call_http(method="POST", url=url, json_body={"applicant": {"income": 1}, "amount": 1})["ok"] is True


def test_400_and_422_are_not_retryable(clean_demo: DemoServer) -> None:
    clean_demo.set_faults([Fault("/compliance/v1/check", fail_first=1, status=400)])
    url = clean_demo.url + "/compliance/v1/check"
    err = call_http(method="POST", url=url, json_body={"amount": 1, "country": "GB"})["error"]
    assert (err["kind"], err["status"], err["retryable"]) == ("http_status", 400, False)
    bad = call_http(method="POST", url=url, json_body={"amount": "lots"})["error"]
    assert (bad["status"], bad["retryable"]) == (422, False)
    assert "invalid request body" in bad["body_excerpt"]


def test_429_with_retry_after_seconds(clean_demo: DemoServer) -> None:
    clean_demo.set_faults([Fault("/compliance/v1/manager-review", fail_first=1, status=429, retry_after_s=2)])
    err = call_http(method="POST", url=clean_demo.url + "/compliance/v1/manager-review")["error"]
    assert (err["status"], err["retryable"], err["retry_after_s"]) == (429, True, 2.0)


def test_retry_after_http_date_and_excerpt_limit(raw: _RawServer) -> None:
    err = call_http(method="GET", url=raw.url + "/retry-date")["error"]
    assert err["status"] == 503 and 25 <= err["retry_after_s"] <= 31
    big = call_http(method="GET", url=raw.url + "/big-error")["error"]
    assert big["body_excerpt"] == "x" * 500 and big["retryable"] is True
    missing = call_http(method="GET", url=raw.url + "/nope")["error"]
    assert (missing["status"], missing["retryable"], missing["body_excerpt"]) == (404, False, "no such path")


# ---------------------------------------------------------------- transport failures


def test_timeout_against_hanging_service(clean_demo: DemoServer) -> None:
    clean_demo.set_faults([Fault("/ledger/v1/entries", hang=True)])
    url = clean_demo.url + "/ledger/v1/entries"
    out = call_http(method="POST", url=url, json_body={}, timeout_seconds=0.5)
    err = out["error"]
    assert (err["kind"], err["retryable"], err["status"]) == ("timeout", True, None)
    assert err["message"] == f"timed out after 0.5 s calling POST {url}"
    assert 450 <= out["elapsed_ms"] < 5000


def test_connection_refused(clean_demo: DemoServer) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/validation/v1/identity"
    out = call_http(method="POST", url=url, json_body={}, headers={"Authorization": SECRET})
    err = out["error"]
    assert (err["kind"], err["retryable"], err["status"], err["body_excerpt"]) == ("connection", True, None, None)
    assert err["message"].startswith(f"connection failed calling POST {url}: ConnectError")
    assert "\n" not in err["message"] and SECRET not in json.dumps(out)


def test_server_dropping_the_connection_is_a_connection_failure(raw: _RawServer) -> None:
    err = call_http(method="GET", url=raw.url + "/drop")["error"]
    assert (err["kind"], err["retryable"]) == ("connection", True)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "GET", "url": "not a url"}, "not a url"),
        ({"method": "GET", "url": "ftp://127.0.0.1/file"}, "ftp://127.0.0.1/file"),
        ({"method": "P OST", "url": "http://127.0.0.1:1/x"}, "invalid HTTP method"),
        ({"method": "POST", "url": "http://127.0.0.1:1/x", "json_body": {"x": float("nan")}}, "ValueError"),
        ({"method": "POST", "url": "http://127.0.0.1:1/x", "json_body": {"x": object()}}, "TypeError"),
        ({"method": "GET", "url": "http://127.0.0.1:1/x", "timeout_seconds": 0}, "timeout_seconds"),
        # The transport's own headers: Host would pick another virtual host behind an allowed address.
        ({"method": "GET", "url": "http://127.0.0.1:1/x", "headers": {"Host": "internal.example"}}, "header Host"),
        ({"method": "GET", "url": "http://127.0.0.1:1/x", "headers": {"transfer-encoding": "chunked"}}, "transfer-encoding"),
    ],
)
def test_invalid_requests_are_not_retryable(kwargs: dict, fragment: str) -> None:
    out = call_http(**kwargs)
    err = out["error"]
    assert (out["ok"], err["kind"], err["retryable"], err["status"]) == (False, "invalid_request", False, None)
    assert fragment in err["message"]


@pytest.mark.parametrize(
    "bad_value",
    ["token-" + "9" * 20 + "\r\nInjected: 1", "token-" + "9" * 20 + "-\u00e9t\u00e9", "token-" + "9" * 20 + "\x00"],
)
def test_bad_header_values_rejected_before_sending_and_never_quoted(bad_value: str) -> None:
    # A closed port: only a check made before connecting can answer invalid_request.
    out = call_http(method="GET", url=f"http://127.0.0.1:{_closed_port()}/x", headers={"X-Api-Key": bad_value})
    assert (out["error"]["kind"], out["error"]["retryable"]) == ("invalid_request", False)
    assert "X-Api-Key" in out["error"]["message"]
    assert "9999" not in json.dumps(out)


def test_secrets_absent_from_failure_messages(clean_demo: DemoServer) -> None:
    clean_demo.set_faults([Fault("/echo/secret", fail_first=1, status=500)])
    out = call_http(method="GET", url=clean_demo.url + "/echo/secret", headers={"Authorization": SECRET})
    assert out["error"]["status"] == 500 and SECRET not in json.dumps(out)
    creds = call_http(method="GET", url=f"http://user:hunter2pw@127.0.0.1:{_closed_port()}/x")
    assert "hunter2pw" not in creds["error"]["message"] and "***@127.0.0.1" in creds["error"]["message"]


# ---------------------------------------------------------------- pooling


def test_sequential_calls_reuse_one_connection(raw: _RawServer) -> None:
    before = raw.connections
    results = [call_http(method="POST", url=raw.url + "/json", json_body={"i": i}) for i in range(20)]
    assert all(r["ok"] for r in results)
    assert raw.connections - before == 1
    # A new client opens a new connection: the count above really measures reuse.
    close_client()
    call_http(method="GET", url=raw.url + "/json")
    assert raw.connections - before == 2


def test_client_created_once_under_concurrency(raw: _RawServer) -> None:
    start = threading.Barrier(8)

    def first_call(_: int) -> int:
        start.wait()
        assert call_http(method="GET", url=raw.url + "/json")["ok"]
        return id(http_call._get_client())

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(first_call, range(8)))
    assert len(ids) == 1
