"""The ``http`` step over real sockets: a test upstream server, the egress guard, traceparent.

Three tiers of the same behaviour: :func:`actors.http_step.call_url` alone (the redirect and
refusal matrix), the ExecutionActor with a thread runner (no Ray: retries and the recorded
failure), and the engine on the session's Ray (the step as a Ray task; one trace per run).
The upstream is a real HTTP server on loopback started here, so the policy names its address
(``127.0.0.1:<port>``): the explicit opt-in for a private target.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from actors.egress import EgressPolicy, close_guarded_clients, parse_allowed_hosts
from actors.execution import ExecutionActor
from actors.http_step import call_url
from actors.registry import ServiceRegistry
from actors.runners import ThreadStepRunner
from actors.settings import Settings
from actors.tracing import parse_traceparent, trace_id_for
from dsl.validation import validate_document
from persistence.store import MemoryStore

pytestmark = pytest.mark.timeout(120)


class Upstream(ThreadingHTTPServer):
    """A third-party API stand-in: records every request (path, headers) and answers by path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self, path_prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(path_prefix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Any, **headers: str) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v if len(v) > 1 else v[0] for k, v in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.requests.append(
                {"method": self.command, "path": parts.path, "query": query, "headers": dict(self.headers.items()),
                 "body": received.decode() or None}
            )
        path = parts.path
        if path == "/rates":
            self._reply(
                200, {"base": query.get("base"), "rate": 1.1, "symbols": query.get("symbol")},
                ETag='"r1"', Set_Cookie="session=secret", X_RateLimit_Remaining="99",
            )
        elif path == "/orders":
            self._reply(201, {"created": json.loads(received or b"null"), "method": self.command})
        elif path.startswith("/flaky/"):
            # /flaky/<key>/<failures>/<status>: the first <failures> calls answer <status>.
            _, _, key, failures, status = path.split("/")
            with self.server.lock:
                count = self.server.counters[key] = self.server.counters.get(key, 0) + 1
            if count <= int(failures):
                self._reply(int(status), {"error": f"attempt {count} refused"})
            else:
                self._reply(200, {"attempt": count})
        elif path.startswith("/status/"):
            self._reply(int(path.rsplit("/", 1)[1]), b"status page " + path.encode())
        elif path == "/redirect":
            self._reply(int(query.get("code", "302")), b"", Location=str(query["to"]))
        elif path == "/loop":
            self._reply(302, b"", Location="/loop")
        elif path == "/trace":
            self._reply(200, {"traceparent": self.headers.get("traceparent")})
        else:
            self._reply(404, b"no such path")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _route


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    close_guarded_clients()
    yield
    close_guarded_clients()


def named(upstream: Upstream, *more: str) -> EgressPolicy:
    """A policy naming the upstream's address (the opt-in for loopback), plus ``more``."""
    return EgressPolicy(parse_allowed_hosts([f"127.0.0.1:{upstream.port}", *more]))


# --- call_url: success, statuses, redirects -------------------------------------------------


def test_success_returns_status_kept_headers_and_json_body(upstream: Upstream) -> None:
    out = call_url(method="get", url=upstream.url + "/rates?base=EUR", policy=named(upstream))
    assert out["ok"] is True and out["status"] == 200 and out["redirects"] == 0
    assert out["body"] == {"base": "EUR", "rate": 1.1, "symbols": None}
    assert out["headers"]["etag"] == '"r1"' and out["headers"]["x-ratelimit-remaining"] == "99"
    assert "set-cookie" not in out["headers"]  # results are checkpointed: no cookies


def test_unexpected_status_is_a_typed_error_that_retry_rules_can_read(upstream: Upstream) -> None:
    out = call_url(method="GET", url=upstream.url + "/status/404", policy=named(upstream))
    error = out["error"]
    assert out["ok"] is False and error["kind"] == "http_status" and error["status"] == 404
    assert error["retryable"] is False and error["body_excerpt"] == "status page /status/404"
    assert "HTTP 404 from GET http://127.0.0.1" in error["message"] and "expected 2xx" in error["message"]
    assert call_url(method="GET", url=upstream.url + "/status/503", policy=named(upstream))["error"]["retryable"] is True
    # 404 listed as expected: a success, with the status in the result.
    ok = call_url(method="GET", url=upstream.url + "/status/404", policy=named(upstream), expected_status=["2xx", 404])
    assert ok["ok"] is True and ok["status"] == 404 and ok["body"] == "status page /status/404"
    # Only 201 expected: a 200 fails, not retryable.
    strict = call_url(method="GET", url=upstream.url + "/rates", policy=named(upstream), expected_status=[201])
    assert strict["error"]["status"] == 200 and strict["error"]["retryable"] is False


def test_redirect_within_the_allowlist_is_followed_and_303_turns_into_get(upstream: Upstream) -> None:
    target = f"{upstream.url}/rates?base=GBP"
    out = call_url(method="GET", url=f"{upstream.url}/redirect?code=307&to={target}", policy=named(upstream))
    assert out["ok"] is True and out["redirects"] == 1 and out["body"]["base"] == "GBP"
    posted = call_url(
        method="POST", url=f"{upstream.url}/redirect?code=303&to=/rates", policy=named(upstream), json_body={"a": 1}
    )
    assert posted["ok"] is True
    assert upstream.seen("/rates")[-1]["method"] == "GET" and upstream.seen("/rates")[-1]["body"] is None
    # An expected 3xx is not followed.
    kept = call_url(method="GET", url=f"{upstream.url}/redirect?to=/rates", policy=named(upstream), expected_status=[302])
    assert kept["ok"] is True and kept["status"] == 302 and kept["headers"]["location"] == "/rates"


def test_redirect_loop_stops_at_the_bound(upstream: Upstream) -> None:
    policy = EgressPolicy(named(upstream).allowed_hosts, max_redirects=2)
    before = len(upstream.seen("/loop"))
    out = call_url(method="GET", url=f"{upstream.url}/loop", policy=policy)
    assert out["error"]["kind"] == "too_many_redirects" and out["error"]["retryable"] is False
    assert len(upstream.seen("/loop")) - before == 3  # the first request and two hops


# --- call_url: refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:{port_other}/rates", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link_local"),
        ("http://10.0.0.7/admin", "private"),
        ("http://2130706433:{port}/rates", "ip_notation"),
        ("http://0x7f.1:{port}/rates", "ip_notation"),
        ("http://[::ffff:127.0.0.1]:{port}/rates", "loopback"),
        ("http://localhost:{port_other}/rates", "loopback"),  # a name: refused after DNS, at connect
        ("ftp://example.com/etc/passwd", "scheme"),
    ],
)
def test_refused_targets_are_never_contacted(upstream: Upstream, url: str, rule: str) -> None:
    # '*' lets every host past the allowlist, so the address rules are what refuses.
    policy = named(upstream, "*")
    before = len(upstream.requests)
    out = call_url(method="GET", url=url.format(port=upstream.port, port_other=upstream.port + 1), policy=policy)
    error = out["error"]
    assert out["ok"] is False and error["kind"] == "egress_refused" and error["rule"] == rule, error
    assert error["retryable"] is False and error["host"] and error["host"] in error["message"]
    assert len(upstream.requests) == before


def test_host_not_in_the_allowlist_is_refused(upstream: Upstream) -> None:
    out = call_url(method="GET", url="https://api.example.com/v1", policy=named(upstream, "*.partner.io"))
    assert out["error"]["rule"] == "not_allowlisted" and out["error"]["host"] == "api.example.com"
    assert "CORTX_HTTP_ALLOWED_HOSTS" in out["error"]["message"]
    empty = call_url(method="GET", url=upstream.url + "/rates", policy=EgressPolicy())
    assert empty["error"]["rule"] == "not_allowlisted"  # the default allows nothing


@pytest.mark.parametrize(
    ("target", "rule"),
    [("http://127.0.0.1:{port_other}/rates", "loopback"), ("http://169.254.169.254/latest/meta-data/", "link_local")],
)
def test_redirect_from_an_allowed_host_to_a_forbidden_one_is_refused(upstream: Upstream, target: str, rule: str) -> None:
    policy = named(upstream, "*")
    to = target.format(port_other=upstream.port + 1)
    out = call_url(method="GET", url=f"{upstream.url}/redirect?to={to}", policy=policy, headers={"Authorization": "x"})
    assert out["error"]["kind"] == "egress_refused" and out["error"]["rule"] == rule, out
    assert urlsplit(to).hostname in out["error"]["message"]


def test_allow_private_lets_allowlisted_names_reach_loopback(upstream: Upstream) -> None:
    url = f"http://localhost:{upstream.port}/rates?base=CHF"
    refused = call_url(method="GET", url=url, policy=EgressPolicy(parse_allowed_hosts("localhost")))
    assert refused["error"]["rule"] == "loopback" and "resolves to 127.0.0.1" in refused["error"]["message"]
    allowed = call_url(method="GET", url=url, policy=EgressPolicy(parse_allowed_hosts("localhost"), allow_private=True))
    assert allowed["ok"] is True and allowed["body"]["base"] == "CHF"
    # Still not the metadata service: link-local is not lifted by allow_private.
    meta = call_url(
        method="GET", url="http://169.254.169.254/", policy=EgressPolicy(parse_allowed_hosts("*"), allow_private=True)
    )
    assert meta["error"]["rule"] == "link_local"


# --- the step in the engine, without Ray -----------------------------------------------------


def http_pack(*steps: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "http-test", "name": "http test", "version": "1", "steps": list(steps), "outputs": outputs or {},
            "inputs": {"base_url": {"type": "string"}}}


async def _run_actor(document: dict[str, Any], inputs: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], list[Any]]:
    validate_document(document)
    store = MemoryStore()
    execution_id = str(uuid.uuid4())
    await store.create_execution(
        execution_id=execution_id, workflow_pack_id="http-test", version="1", pack_document=document, inputs=inputs,
        options={},
    )
    actor = ExecutionActor(
        execution_id, store=store, registry=ServiceRegistry(), settings=settings, runner=ThreadStepRunner()
    )
    record = await actor.run()
    return record, await store.load_checkpoints(execution_id)


def test_step_maps_outputs_and_retries_a_typed_error(upstream: Upstream) -> None:
    key = uuid.uuid4().hex[:8]
    document = http_pack(
        {
            "id": "rates", "type": "http", "url": "${ inputs.base_url }/rates",
            "query": {"base": "EUR", "symbol": ["USD", "JPY"], "skip": None},
            "outputs": {"rate": "${ result.body.rate }", "etag": "${ result.headers.etag }", "status": "${ result.status }",
                        "symbols": "${ result.body.symbols }"},
        },
        {
            "id": "order", "type": "http", "method": "post", "dependencies": ["rates"],
            "url": "${ inputs.base_url }/flaky/" + key + "/2/503", "body": {"rate": "${ steps.rates.outputs.rate }"},
            "on_error": {"retry": {"max_attempts": 3, "initial_delay_ms": 10, "retry_on": ["http_5xx"]}},
        },
        outputs={"rate": "${ steps.rates.outputs.rate }", "order": "${ steps.order.outputs }"},
    )
    settings = Settings(database_url="memory://", http_allowed_hosts=(f"127.0.0.1:{upstream.port}",))
    record, checkpoints = asyncio.run(_run_actor(document, {"base_url": upstream.url}, settings))
    assert record["status"] == "completed", record
    assert record["outputs"]["rate"] == 1.1
    assert record["outputs"]["order"] == {"status": 200, "headers": record["outputs"]["order"]["headers"], "body": {"attempt": 3}}
    rates = [cp for cp in checkpoints if cp.step_key == "rates"][0]
    assert rates.outputs == {"rate": 1.1, "etag": '"r1"', "status": 200, "symbols": ["USD", "JPY"]}
    order = sorted((cp.attempt, cp.status, (cp.error or {}).get("kind"), (cp.error or {}).get("status"))
                   for cp in checkpoints if cp.step_key == "order")
    assert order == [(1, "failed", "http_status", 503), (2, "failed", "http_status", 503), (3, "completed", None, None)]
    posts = upstream.seen(f"/flaky/{key}")
    assert [json.loads(p["body"]) for p in posts] == [{"rate": 1.1}] * 3
    assert len({p["headers"]["Idempotency-Key"] for p in posts}) == 1  # one key across attempts


def test_refusal_is_recorded_as_the_steps_failure_and_not_retried(upstream: Upstream) -> None:
    document = http_pack(
        {"id": "steal", "type": "http", "url": "http://169.254.169.254/latest/meta-data/iam",
         "on_error": {"retry": {"max_attempts": 5, "initial_delay_ms": 10}}},
    )
    settings = Settings(database_url="memory://", http_allowed_hosts=("*",))
    record, checkpoints = asyncio.run(_run_actor(document, {}, settings))
    assert record["status"] == "failed"
    assert "169.254.169.254" in record["error"] and "link_local" in record["error"]
    failed = [cp for cp in checkpoints if cp.step_key == "steal"]
    assert len(failed) == 1 and failed[0].error["kind"] == "egress_refused" and failed[0].error["rule"] == "link_local"
    assert failed[0].error["will_retry"] is False


# --- the engine on Ray ------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_on_ray_steps_share_one_trace_and_refusals_fail_the_run(
    upstream: Upstream, engine_sqlite_url: str, make_client: Any
) -> None:
    client = make_client(
        engine_sqlite_url, ServiceRegistry.from_mapping({"services": {"api": {"base_url": upstream.url}}}),
        http_allowed_hosts=(f"127.0.0.1:{upstream.port}",),
    )
    document = http_pack(
        {"id": "first", "type": "http", "url": "${ inputs.base_url }/trace"},
        {"id": "second", "type": "http", "url": "${ inputs.base_url }/flaky/" + uuid.uuid4().hex[:8] + "/1/502",
         "dependencies": ["first"], "on_error": {"retry": {"max_attempts": 2, "initial_delay_ms": 10}}},
        {"id": "third", "type": "service_call", "service": "api", "endpoint": "/trace", "method": "GET",
         "dependencies": ["second"]},
        outputs={"seen": "${ steps.first.outputs.body.traceparent }"},
    )
    before = len(upstream.requests)
    execution_id = client.start(document, {"base_url": upstream.url})
    record = client.wait(execution_id, timeout_s=120)
    assert record["status"] == "completed", record
    arrived = [r["headers"].get("traceparent") for r in upstream.requests[before:]]
    assert len(arrived) == 4  # first, second twice, third (a service_call)
    parsed = [parse_traceparent(value) for value in arrived]
    assert all(p is not None for p in parsed), arrived  # well-formed W3C version 00
    assert {p[0] for p in parsed if p} == {trace_id_for(execution_id)} == {uuid.UUID(execution_id).hex}
    assert len({p[1] for p in parsed if p}) == 4  # a new span per attempt
    assert record["outputs"]["seen"] == arrived[0]

    refused = client.run(
        http_pack({"id": "probe", "type": "http", "url": "http://2130706433/"}), {}, timeout_s=120
    )
    assert refused["status"] == "failed"
    assert "ip_notation" in refused["error"] and "2130706433" in refused["error"]


@pytest.mark.timeout(180)
def test_external_api_example_runs_against_the_demo_services(
    engine_sqlite_url: str, demo_services: Any, make_client: Any
) -> None:
    from pathlib import Path

    from tests.conftest import demo_registry

    examples = Path(__file__).parents[2] / "examples"
    port = urlsplit(demo_services.url).port
    client = make_client(engine_sqlite_url, demo_registry(demo_services.url), http_allowed_hosts=(f"127.0.0.1:{port}",))
    inputs = {**json.loads((examples / "external-api.inputs.json").read_text()), "rates_api": demo_services.url + "/echo"}
    record = client.run(examples / "external-api.yaml", inputs, timeout_s=120)
    assert record["status"] == "completed", record
    assert record["outputs"]["status"] == 200
    assert record["outputs"]["base"] == "EUR" and record["outputs"]["symbol"] == "USD"
    assert record["outputs"]["ledger_entry"].startswith("le-")

    # The same pack where the deployment allows no host: refused, not retried.
    closed = make_client(engine_sqlite_url, demo_registry(demo_services.url))
    refused = closed.run(examples / "external-api.yaml", inputs, timeout_s=120)
    assert refused["status"] == "failed" and "not_allowlisted" in refused["error"], refused
    assert "after 1 attempt" in refused["error"]
