"""Run events on a real local Ray: the outbox, webhook subscriptions and the Ledger audit log.

Receivers are real HTTP servers started here (``Receiver``: a threaded ``http.server`` on a
free loopback port that answers 503 while told to). Runs call the session's demo services
(echo, on paths of their own so injected faults touch only them). Signatures are checked
with an HMAC written out here from the Standard Webhooks rule, not with the project's
signing function.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import demo_registry, stored_checkpoints, stored_events

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

CARD = "4111-1111-1111-1234"  # a secret input: it must appear in no event and no delivery
HOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


# --------------------------------------------------------------------------- a real receiver


class Receiver:
    """A webhook receiver: records every request; answers 503 while ``refuse(body, path)`` is true."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refuse: Callable[[dict[str, Any], str], bool] = lambda body, path: False
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw)
                with receiver._lock:
                    status = 503 if receiver.refuse(body, self.path) else 200
                    receiver.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                              "raw": raw, "body": body, "status": status, "at": time.monotonic()})
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def acked(self, execution_id: str, path: str = "/hook") -> list[dict[str, Any]]:
        """Bodies answered 2xx for one run at ``path``, in arrival order."""
        with self._lock:
            return [r["body"] for r in self.requests
                    if r["status"] == 200 and r["path"] == path and r["body"]["data"]["execution_id"] == execution_id]

    def of(self, execution_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["body"]["data"]["execution_id"] == execution_id]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def wait_until(condition: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")




checkpoints = stored_checkpoints  # the name these tests use


def expected_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks: base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``, key = base64-decoded whsec_ rest."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def pack(path: str) -> dict[str, Any]:
    """A run with a retried service call (its URL carries the secret input), an emit step and a condition."""
    return {
        "id": f"events-{uuid.uuid4().hex[:8]}",
        "name": "events",
        "version": "1.0.0",
        "inputs": {"order": {"type": "string"}, "card": {"type": "string", "secret": True}},
        "steps": [
            {"id": "charge", "type": "service_call", "service": "echo", "endpoint": path + "-${ inputs.card }",
             "method": "POST", "inputs": {"order": "${ inputs.order }"},
             "on_error": {"retry": {"max_attempts": 3, "initial_delay_ms": 20}}},
            {"id": "announce", "type": "emit", "event_type": "order.charged", "dependencies": ["charge"],
             "data": {"order": "${ inputs.order }", "method": "${ steps.charge.outputs.method }"}},
            {"id": "big", "type": "condition", "condition": "inputs.order == 'A-1'", "dependencies": ["announce"],
             "then": [{"id": "note", "type": "emit", "event_type": "order.noted", "data": {"n": 1}}]},
        ],
        "outputs": {"order": "${ inputs.order }"},
    }


def secrets_file(tmp_path: Path) -> str:
    path = tmp_path / "secrets.yaml"
    path.write_text(f"HOOK_KEY: {HOOK_SECRET}\n")
    return str(path)


# --------------------------------------------------------------------------- the outbox


def test_every_state_change_has_its_event_in_order_gap_free(
    engine_db: str, demo_services: Any, make_client: Any
) -> None:
    from serve_app.demo_services import Fault

    path = f"/v1/charge-{uuid.uuid4().hex[:8]}"
    demo_services.set_faults([Fault(path=f"/echo{path}-{CARD}", fail_first=1, status=503)])
    try:
        client = make_client(engine_db, demo_registry(demo_services.url))
        execution_id = client.start(pack(path), {"order": "A-1", "card": CARD})
        record = client.wait(execution_id, timeout_s=120)
    finally:
        demo_services.set_faults([])
    assert record["status"] == "completed", record
    events = stored_events(engine_db, execution_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gap-free
    kinds = [(e.type, e.step_key, e.attempt) for e in events]
    assert kinds[0] == ("execution.started", None, None) and kinds[-1] == ("execution.completed", None, None)
    # Every checkpoint has its event, and the order follows the run.
    for cp in checkpoints(engine_db, execution_id):
        assert (f"step.{cp.status}", cp.step_key, cp.attempt) in kinds, cp
    order = [k for k in kinds if k[1] in {"charge", "announce"}]
    assert order == [
        ("step.started", "charge", 1), ("step.failed", "charge", 1), ("step.retrying", "charge", 1),
        ("step.started", "charge", 2), ("step.completed", "charge", 2),
        ("step.started", "announce", 1), ("step.completed", "announce", 1), ("order.charged", "announce", 1),
    ]
    custom = {e.type: e for e in events if e.type.startswith("order.")}
    assert custom["order.charged"].payload == {"data": {"order": "A-1", "method": "POST"}}
    assert custom["order.noted"].step_key == "note" and custom["order.noted"].payload == {"data": {"n": 1}}
    failed = next(e for e in events if e.type == "step.failed")
    assert "503" in failed.payload["error"] and failed.payload["step_type"] == "service_call"
    # The secret input was in the failing URL: masked in every event.
    text = json.dumps([e.to_dict() for e in events])
    assert CARD not in text and "***" in failed.payload["error"]


# --------------------------------------------------------------------------- webhooks


def test_a_receiver_failing_twice_gets_every_event_once_acknowledged_in_order_and_signed(
    engine_db: str, demo_services: Any, make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    from actors.events_delivery import Subscription

    # The session's database holds other runs too: a new subscription is sent theirs as well.
    execution_id = str(uuid.uuid4())
    refused = {"n": 0}

    def refuse_first_two(body: dict[str, Any], path: str) -> bool:
        if body["data"]["execution_id"] != execution_id or path != "/hook":
            return False
        refused["n"] += 1
        return refused["n"] <= 2

    receiver.refuse = refuse_first_two
    hooks = (
        Subscription(name="all", url=receiver.url, signing_secret="HOOK_KEY", initial_delay_ms=300, max_delay_ms=5000),
        Subscription(name="ends", url=receiver.url.replace("/hook", "/ends"), events=("execution.*", "order.*"),
                     signing_secret="HOOK_KEY"),
    )
    client = make_client(engine_db, demo_registry(demo_services.url), event_subscriptions=hooks,
                         secrets_file=secrets_file(tmp_path))
    client.start(pack(f"/v1/charge-{uuid.uuid4().hex[:8]}"), {"order": "A-1", "card": CARD}, execution_id=execution_id)
    assert client.wait(execution_id, timeout_s=120)["status"] == "completed"
    events = stored_events(engine_db, execution_id)
    wanted = [e for e in events if e.type.startswith(("execution.", "order."))]
    wait_until(lambda: len(receiver.acked(execution_id, "/hook")) >= len(events), 60, "every event acknowledged")
    wait_until(lambda: len(receiver.acked(execution_id, "/ends")) >= len(wanted), 60, "filtered events acknowledged")
    time.sleep(1.0)  # nothing more arrives
    hook = [r for r in receiver.of(execution_id) if r["path"] == "/hook"]
    # The first event was refused twice, then acknowledged; backoff about 300 ms, then 600 ms.
    assert [(r["body"]["data"]["seq"], r["status"]) for r in hook[:3]] == [(1, 503), (1, 503), (1, 200)]
    assert hook[1]["at"] - hook[0]["at"] >= 0.25 and hook[2]["at"] - hook[1]["at"] >= 0.5
    # Every event acknowledged once, in seq order, under its stable id.
    acked = receiver.acked(execution_id, "/hook")
    assert [b["data"]["seq"] for b in acked] == [e.seq for e in events]
    assert [b["id"] for b in acked] == [e.event_id for e in events]
    assert [b["type"] for b in acked] == [e.type for e in events]
    # The filtered subscription: only its types, once each, in order.
    assert [b["id"] for b in receiver.acked(execution_id, "/ends")] == [e.event_id for e in wanted]
    assert "order.charged" in [b["type"] for b in receiver.acked(execution_id, "/ends")]
    for r in receiver.of(execution_id):
        assert r["headers"]["webhook-id"] == r["body"]["id"]  # the dedup key is the event's id, on retries too
        assert r["headers"]["webhook-signature"] == expected_signature(
            HOOK_SECRET, r["headers"]["webhook-id"], r["headers"]["webhook-timestamp"], r["raw"])
        assert abs(int(r["headers"]["webhook-timestamp"]) - time.time()) < 300
    assert CARD not in json.dumps([r["body"] for r in receiver.of(execution_id)])


def test_delivery_resumes_after_the_delivering_host_is_killed(
    engine_db: str, demo_services: Any, make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    import ray

    from actors.events_delivery import Subscription
    from actors.host import shared_host_name

    gate = {"open_to": 3}
    execution_id = str(uuid.uuid4())
    receiver.refuse = lambda body, path: body["data"]["execution_id"] == execution_id and body["data"]["seq"] > gate["open_to"]
    hooks = (Subscription(name="resume", url=receiver.url, signing_secret="HOOK_KEY", initial_delay_ms=100,
                          max_delay_ms=400),)
    client = make_client(engine_db, demo_registry(demo_services.url), event_subscriptions=hooks,
                         secrets_file=secrets_file(tmp_path))
    client.start(pack(f"/v1/k-{uuid.uuid4().hex[:8]}"), {"order": "C-3", "card": CARD}, execution_id=execution_id)
    assert client.wait(execution_id, timeout_s=120)["status"] == "completed"
    events = stored_events(engine_db, execution_id)
    # Events 1..3 acknowledged, 4 refused at least once: the cursor of 3 is durable by then.
    wait_until(lambda: any(r["body"]["data"]["seq"] == 4 for r in receiver.of(execution_id)), 60, "event 4 tried")
    ray.kill(ray.get_actor(shared_host_name(0), namespace=client.namespace), no_restart=False)
    gate["open_to"] = 1 << 30
    wait_until(lambda: len(receiver.acked(execution_id)) >= len(events), 90, "delivery after the restart")
    time.sleep(1.0)
    acked = receiver.acked(execution_id)
    # Nothing acknowledged before the kill was sent again; the rest came once each, in order.
    assert [b["data"]["seq"] for b in acked] == [e.seq for e in events]
    assert ray.get(ray.get_actor(shared_host_name(0), namespace=client.namespace).info.remote())["pid"]


# --------------------------------------------------------------------------- the Ledger (FDD §4.1)


def test_the_ledger_receives_every_event_as_an_audit_record(
    engine_sqlite_url: str, demo_services: Any, make_client: Any
) -> None:
    import httpx

    from serve_app.demo_services import Fault

    demo_services.set_faults([Fault(path="/ledger/v1/audit", fail_first=2, status=503)])
    try:
        client = make_client(engine_sqlite_url, demo_registry(demo_services.url), ledger_audit=True)
        execution_id = client.start(pack(f"/v1/l-{uuid.uuid4().hex[:8]}"), {"order": "D-4", "card": CARD})
        assert client.wait(execution_id, timeout_s=120)["status"] == "completed"
        events = stored_events(engine_sqlite_url, execution_id)

        def records() -> list[dict[str, Any]]:
            answer = httpx.get(f"{demo_services.url}/ledger/v1/audit", params={"execution_id": execution_id})
            return answer.json()["records"]

        wait_until(lambda: len(records()) >= len(events), 60, "audit records")
    finally:
        demo_services.set_faults([])
    got = records()
    assert [(r["seq"], r["type"], r["event_id"]) for r in got] == [(e.seq, e.type, e.event_id) for e in events]
    assert all(r["record_type"] == "workflow.event" and r["at"].endswith("Z") for r in got)
    assert CARD not in json.dumps(got)


class Trickler:
    """A receiver that answers one byte a second and never finishes: no read ever times out."""

    def __init__(self) -> None:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/slow"
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: Any) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
            while not self._stop.is_set():
                conn.sendall(b" ")
                time.sleep(1.0)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


def test_a_trickling_receiver_holds_up_neither_other_subscriptions_nor_itself_for_ever(
    engine_db: str, demo_services: Any, make_client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    from actors.events_delivery import Subscription

    slow = Trickler()
    try:
        hooks = (
            Subscription(name="trickle", url=slow.url, signing_secret="HOOK_KEY", timeout_seconds=2,
                         initial_delay_ms=500, max_delay_ms=1000),
            Subscription(name="healthy", url=receiver.url, signing_secret="HOOK_KEY"),
        )
        client = make_client(engine_db, demo_registry(demo_services.url), event_subscriptions=hooks,
                             secrets_file=secrets_file(tmp_path))
        execution_id = client.start(pack(f"/v1/charge-{uuid.uuid4().hex[:8]}"), {"order": "A-2", "card": CARD})
        assert client.wait(execution_id, timeout_s=120)["status"] == "completed"
        events = stored_events(engine_db, execution_id)
        wait_until(lambda: len(receiver.acked(execution_id)) >= len(events), 60, "the healthy receiver's events")
        # the trickler's attempts end at their deadline and are tried again: more than one connection
        wait_until(lambda: slow.connections >= 2, 30, "a second attempt at the trickling receiver")
    finally:
        slow.stop()
    assert [b["data"]["seq"] for b in receiver.acked(execution_id)] == [e.seq for e in events]
