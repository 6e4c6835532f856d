"""The demo upstream services over real HTTP: answers, 422s, faults, counting, control plane."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest

from dsl.errors import ConfigurationError
from serve_app.demo_services import DemoServer, Fault, create_app, parse_fault, serve, start_in_thread


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServer]:
    with start_in_thread() as server:
        yield server


@pytest.fixture
def client(demo: DemoServer) -> Iterator[httpx.Client]:
    demo.set_faults([])
    demo.reset()
    with httpx.Client(base_url=demo.url, timeout=10) as c:
        yield c


# ---------------------------------------------------------------- business answers


@pytest.mark.parametrize(
    ("applicant", "valid"),
    [
        ({"name": "Ada", "id": "A-1"}, True),
        ({"name": "Ada", "id": 7}, True),
        ({"name": "", "id": "A-1"}, False),
        ({"name": "   ", "id": "A-1"}, False),
        ({"name": "Ada"}, False),
        ({"id": "A-1"}, False),
    ],
)
def test_identity(client: httpx.Client, applicant: dict, valid: bool) -> None:
    r = client.post("/validation/v1/identity", json={"applicant": applicant})
    assert r.status_code == 200
    assert r.json() == {"check": "identity", "valid": valid}


@pytest.mark.parametrize(
    ("applicant", "amount", "expected"),
    [
        ({"income": 1000}, 5000, {"check": "income", "valid": True, "ratio": 5.0}),
        ({"income": 1000}, 5001, {"check": "income", "valid": False, "ratio": 5.001}),
        ({"income": 3000}, 1000, {"check": "income", "valid": True, "ratio": 0.333}),
        ({}, 10, {"check": "income", "valid": False, "ratio": None}),
        ({"income": 0}, 10, {"check": "income", "valid": False, "ratio": None}),
        ({"income": "lots"}, 10, {"check": "income", "valid": False, "ratio": None}),
    ],
)
def test_income(client: httpx.Client, applicant: dict, amount: int, expected: dict) -> None:
    r = client.post("/validation/v1/income", json={"applicant": applicant, "amount": amount})
    assert r.status_code == 200
    assert r.json() == expected


def test_item(client: httpx.Client) -> None:
    ok = client.post("/validation/v1/item", json={"sku": "SKU-1", "quantity": 3, "unit_price": 2.5}).json()
    assert ok == {"sku": "SKU-1", "valid": True, "total": 7.5}
    zero = client.post("/validation/v1/item", json={"sku": "SKU-2", "quantity": 0, "unit_price": 4}).json()
    assert zero == {"sku": "SKU-2", "valid": False, "total": 0}
    negative = client.post("/validation/v1/item", json={"sku": "S", "quantity": 2, "unit_price": -1}).json()
    assert negative["valid"] is False and negative["total"] == -2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"amount": 500, "country": "GB"}, {"approved": True, "risk": "low"}),
        ({"amount": 10_000, "country": "GB"}, {"approved": True, "risk": "low"}),
        ({"amount": 10_001, "country": "GB"}, {"approved": True, "risk": "high"}),
        ({"amount": 1_000_001, "country": "GB"}, {"approved": False, "risk": "high"}),
        ({"amount": 10, "country": "KP"}, {"approved": False, "risk": "low"}),
        ({"amount": 10, "country": "IR"}, {"approved": False, "risk": "low"}),
    ],
)
def test_compliance_check(client: httpx.Client, body: dict, expected: dict) -> None:
    assert client.post("/compliance/v1/check", json=body).json() == expected


def test_manager_review(client: httpx.Client) -> None:
    r = client.post("/compliance/v1/manager-review", json={"anything": 1})
    assert r.json() == {"approved": True, "reviewer": "manager-on-duty"}


def test_ledger_entry_id_from_key_or_canonical_body(client: httpx.Client) -> None:
    by_key = client.post("/ledger/v1/entries", json={"a": 1}, headers={"Idempotency-Key": "k-1"}).json()
    assert by_key == {"recorded": True, "entry_id": "le-" + hashlib.sha256(b"k-1").hexdigest()[:12]}
    # Same key, different body: the ledger dedupes on the key.
    again = client.post("/ledger/v1/entries", json={"a": 2}, headers={"Idempotency-Key": "k-1"}).json()
    assert again["entry_id"] == by_key["entry_id"]
    other = client.post("/ledger/v1/entries", json={"a": 1}, headers={"Idempotency-Key": "k-2"}).json()
    assert other["entry_id"] != by_key["entry_id"]
    # No key: the canonical JSON body decides, whatever the key order or spacing.
    one = client.post("/ledger/v1/entries", content=b'{"b": 2, "a": 1}', headers={"content-type": "application/json"})
    two = client.post("/ledger/v1/entries", json={"a": 1, "b": 2})
    assert one.json()["entry_id"] == two.json()["entry_id"] == "le-" + hashlib.sha256(b'{"a":1,"b":2}').hexdigest()[:12]


def test_echo(client: httpx.Client) -> None:
    r = client.put("/echo/orders/42?expand=lines&x=1", json={"qty": 3})
    assert r.json() == {"method": "PUT", "path": "/echo/orders/42", "body": {"qty": 3}, "query": {"expand": "lines", "x": "1"}}
    assert client.get("/echo/ping").json() == {"method": "GET", "path": "/echo/ping", "body": None, "query": {}}


# ---------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/validation/v1/identity", b"not json"),
        ("/validation/v1/identity", b"[1, 2]"),
        ("/validation/v1/identity", b'{"applicant": "Ada"}'),
        ("/validation/v1/income", b'{"applicant": {"income": 10}}'),
        ("/validation/v1/income", b'{"applicant": {"income": 10}, "amount": "5"}'),
        ("/validation/v1/item", b'{"sku": "x", "quantity": 1.5, "unit_price": 1}'),
        ("/validation/v1/item", b'{"sku": "x", "quantity": 1, "unit_price": NaN}'),
        ("/validation/v1/item", b'{"sku": "x", "quantity": 2, "unit_price": 1e308}'),
        ("/compliance/v1/check", b'{"amount": 1}'),
        ("/compliance/v1/check", b'{"amount": Infinity, "country": "GB"}'),
        ("/ledger/v1/entries", b"{oops"),
        ("/echo/x", b'{"a": NaN}'),
    ],
)
def test_bad_body_is_422_json(client: httpx.Client, path: str, content: bytes) -> None:
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"] == "invalid request body"


# ---------------------------------------------------------------- faults and latency


def test_fail_first_then_success(client: httpx.Client, demo: DemoServer) -> None:
    demo.set_faults([Fault("/validation/v1/income", fail_first=2, status=503)])
    body = {"applicant": {"income": 100}, "amount": 100}
    answers = [client.post("/validation/v1/income", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].json() == {"error": "injected failure", "call": 1}
    assert answers[1].json() == {"error": "injected failure", "call": 2}
    assert answers[2].json()["valid"] is True
    # Other paths are untouched.
    assert client.post("/compliance/v1/manager-review").status_code == 200
    assert demo.calls()["by_path"]["POST /validation/v1/income"] == 3


def test_fault_status_and_retry_after(client: httpx.Client, demo: DemoServer) -> None:
    demo.set_faults([Fault("/compliance/v1/check", fail_first=1, status=429, retry_after_s=2)])
    r = client.post("/compliance/v1/check", json={"amount": 1, "country": "GB"})
    assert r.status_code == 429 and r.headers["retry-after"] == "2"


def test_reset_restarts_fault_progress(client: httpx.Client, demo: DemoServer) -> None:
    demo.set_faults([Fault("/compliance/v1/manager-review", fail_first=1)])
    assert client.post("/compliance/v1/manager-review").status_code == 503
    assert client.post("/compliance/v1/manager-review").status_code == 200
    assert client.post("/_demo/reset").status_code == 200
    assert client.post("/compliance/v1/manager-review").status_code == 503


def test_delay_and_latency(client: httpx.Client, demo: DemoServer) -> None:
    demo.set_faults([Fault("/echo/slow", delay_ms=300)])
    t0 = time.perf_counter()
    client.get("/echo/fast")
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert client.get("/echo/slow").status_code == 200
    slow = time.perf_counter() - t0
    assert slow >= 0.3 and fast < 0.25
    with start_in_thread(latency_ms=200) as laggy, httpx.Client(base_url=laggy.url) as c:
        t0 = time.perf_counter()
        c.post("/compliance/v1/manager-review")
        assert time.perf_counter() - t0 >= 0.2
        t0 = time.perf_counter()
        c.get("/_demo/health")  # the control plane is not slowed down
        assert time.perf_counter() - t0 < 0.15


def test_hang_is_counted_and_times_out_client(client: httpx.Client, demo: DemoServer) -> None:
    demo.set_faults([Fault("/ledger/v1/entries", hang=True)])
    with pytest.raises(httpx.ReadTimeout):
        client.post("/ledger/v1/entries", json={}, timeout=0.3)
    assert demo.calls()["by_path"] == {"POST /ledger/v1/entries": 1}


def test_faults_via_control_plane(client: httpx.Client) -> None:
    r = client.post("/_demo/faults", json=[{"path": "/echo/a", "fail_first": 1, "status": 500}, "/echo/b=1:418"])
    assert r.status_code == 200
    assert [f["path"] for f in r.json()] == ["/echo/a", "/echo/b"]
    assert client.get("/echo/a").status_code == 500
    assert client.get("/echo/b").status_code == 418
    assert client.get("/echo/a").status_code == 200
    assert client.get("/_demo/faults").json()[0]["calls"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"path": "/x"},
        [{"path": "no-slash"}],
        [{"path": "/x", "fail_first": -1}],
        [{"path": "/x", "status": 99}],
        [{"path": "/x", "delay_ms": "5"}],
        [{"path": "/x", "bogus": 1}],
        [{"fail_first": 1}],
        ["/x=abc"],
        [3],
    ],
)
def test_bad_faults_are_422(client: httpx.Client, body: object) -> None:
    client.post("/_demo/faults", json=["/echo/keep=1"])
    r = client.post("/_demo/faults", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid faults"
    assert [f["path"] for f in client.get("/_demo/faults").json()] == ["/echo/keep"]  # unchanged


# ---------------------------------------------------------------- counting


def test_counts_by_path_and_key_and_log(client: httpx.Client) -> None:
    client.post("/validation/v1/identity", json={"applicant": {}})
    client.post("/validation/v1/identity", json={"applicant": {}}, headers={"Idempotency-Key": "run-1:step-a"})
    client.post("/ledger/v1/entries", json={}, headers={"Idempotency-Key": "run-1:step-a"})
    client.get("/echo/z")
    client.get("/_demo/health")  # control plane: not counted
    calls = client.get("/_demo/calls").json()
    assert calls["total"] == 4
    assert calls["by_path"] == {
        "POST /validation/v1/identity": 2,
        "POST /ledger/v1/entries": 1,
        "GET /echo/z": 1,
    }
    assert calls["by_idempotency_key"] == {"run-1:step-a": 2}
    assert [(e["method"], e["path"], e["idempotency_key"]) for e in calls["log"]] == [
        ("POST", "/validation/v1/identity", None),
        ("POST", "/validation/v1/identity", "run-1:step-a"),
        ("POST", "/ledger/v1/entries", "run-1:step-a"),
        ("GET", "/echo/z", None),
    ]
    stamps = [e["at_ms"] for e in calls["log"]]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time() * 1000) < 60_000
    client.post("/_demo/reset")
    assert client.get("/_demo/calls").json() == {"total": 0, "by_path": {}, "by_idempotency_key": {}, "log": []}


def test_log_keeps_last_1000(client: httpx.Client, demo: DemoServer) -> None:
    for i in range(1005):
        client.get(f"/echo/{i}")
    calls = demo.calls()
    assert calls["total"] == 1005
    assert len(calls["log"]) == 1000 and calls["log"][0]["path"] == "/echo/5"


def test_concurrent_calls_counted_exactly(client: httpx.Client, demo: DemoServer) -> None:
    def one(i: int) -> int:
        with httpx.Client(base_url=demo.url, timeout=10) as c:
            return c.post("/ledger/v1/entries", json={"i": i}, headers={"Idempotency-Key": f"k{i % 5}"}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(50)))
    assert statuses == [200] * 50
    calls = client.get("/_demo/calls").json()
    assert calls["total"] == 50
    assert calls["by_path"] == {"POST /ledger/v1/entries": 50}
    assert calls["by_idempotency_key"] == {f"k{i}": 10 for i in range(5)}


def test_health(client: httpx.Client) -> None:
    assert client.get("/_demo/health").json() == {"ok": True}


# ---------------------------------------------------------------- parse_fault, hosts, app args


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/validation/v1/income=2", Fault("/validation/v1/income", fail_first=2)),
        ("/validation/v1/income=2:500", Fault("/validation/v1/income", fail_first=2, status=500)),
        ("/x=0:200:delay=500", Fault("/x", fail_first=0, status=200, delay_ms=500)),
        ("/x=0:delay=50", Fault("/x", delay_ms=50)),
        ("/x=0:hang", Fault("/x", hang=True)),
        ("/x=1:429:retry_after=1.5", Fault("/x", fail_first=1, status=429, retry_after_s=1.5)),
    ],
)
def test_parse_fault(text: str, expected: Fault) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "/x", "x=1", "/x=", "/x=two", "/x=-1", "/x=1:700", "/x=1:delay=soon", "/x=1:bogus", "/x=1:hang=yes", "/x=1:503:50"],
)
def test_parse_fault_errors(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_fault(text)
    assert info.value.name.startswith("fault")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_non_loopback_host_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        serve(host=host, port=0)


def test_create_app_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        create_app(latency_ms=-1)
    with pytest.raises(ConfigurationError):
        Fault("/x", status=1000)


def test_stop_frees_port_and_is_idempotent() -> None:
    server = start_in_thread()
    assert httpx.get(server.url + "/_demo/health").status_code == 200
    server.stop()
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/_demo/health", timeout=1)


def test_stop_is_prompt_with_a_call_hanging() -> None:
    server = start_in_thread(faults=[Fault("/echo/hang", hang=True)])
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, server.url + "/echo/hang", timeout=30)
        deadline = time.monotonic() + 5
        while server.calls()["total"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        server.stop()
        assert time.perf_counter() - t0 < 5
        answer = pending.result(timeout=10)
        assert answer.status_code == 503 and answer.json() == {"error": "demo services stopping"}


@contextlib.contextmanager
def _demo_process(*args: str) -> Iterator[str]:
    """Run ``python ARGS`` from the repository root; yield the URL it prints, then stop it."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("demo services listening on http://127.0.0.1:"), line or proc.stderr.read()
        yield line.rsplit(" ", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_command_line_prints_url_then_serves() -> None:
    with _demo_process("-m", "serve_app.demo_services", "--port", "0", "--fault", "/echo/x=1:500") as url:
        assert httpx.get(url + "/echo/x", timeout=5).status_code == 500
        assert httpx.get(url + "/echo/x", timeout=5).status_code == 200


def test_command_line_rejects_bad_fault() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.demo_services", "--port", "0", "--fault", "nonsense"],
        cwd=root, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2 and "fault" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    "spelling",
    [
        ["-m", "serve_app.demo_services", "--fail"],  # the CLI's spelling on the module
        ["-m", "serve_app.cli", "demo-services", "--fault"],  # the module's spelling on the CLI
    ],
    ids=["module --fail", "cli --fault"],
)
def test_command_lines_accept_both_fault_spellings(spelling: list[str]) -> None:
    with socket.socket() as probe:  # the CLI takes no port 0: pick a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = "/echo/x=1:500:retry_after=2"
    *head, option = spelling
    with _demo_process(*head, "--port", str(port), option, text) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/_demo/faults", timeout=5).json() == [asdict(parse_fault(text)) | {"calls": 0}]
        failed = httpx.get(url + "/echo/x", timeout=5)
        assert failed.status_code == 500 and failed.headers["retry-after"] == "2"
        assert httpx.get(url + "/echo/x", timeout=5).status_code == 200


def test_a_caller_that_hangs_up_mid_body_is_not_a_server_error(
    demo: DemoServer, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # A step cancelled during an injected delay hangs up before its body is read: the
    # demo services log no "Exception in ASGI application" for it and keep answering.
    demo.set_faults([Fault(path="/echo/v1/slow", delay_ms=300)])
    host, port = demo.url.removeprefix("http://").rsplit(":", 1)
    with caplog.at_level("ERROR"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /echo/v1/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"n\": 1")
        time.sleep(0.8)  # past the delay: the handler reads the body of a closed connection
        assert client.post("/echo/v1/ping", json={"n": 2}).json()["body"] == {"n": 2}
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
