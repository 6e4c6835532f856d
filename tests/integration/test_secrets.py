"""Secrets and webhooks on the real engine: values reach the callee, never the run's records.

Runs on a real local Ray (``make_client``) or, for the crash-and-resume test, on the
ExecutionActor itself with a thread runner; upstreams are real HTTP servers: the
:class:`tests.stubs.StubServer` and :class:`WebhookReceiver`, a receiver that checks every
delivery's Standard Webhooks signature with its own HMAC code (not the engine's).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import stored_checkpoints
from tests.leaks import dump_rows, occurrences
from tests.stubs import StubServer

pytestmark = pytest.mark.timeout(120)

SIGNING_KEY = "whsec_" + base64.b64encode(b"receiver-shared-key-31b7").decode()
CARD = "ctok_input_93ad51e7"
API_KEY = "sk_named_6c0e2f48"


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1: verifies each delivery's signature, records it.

    Args:
        secret: the shared signing secret (``whsec_<base64>``).
        fail_first: answer this many deliveries with 503 before answering 200.
    """

    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        key = base64.b64decode(secret.removeprefix("whsec_"))
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                msg_id, stamp = self.headers.get("webhook-id", ""), self.headers.get("webhook-timestamp", "")
                expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest())
                offered = [s.split(",", 1)[1] for s in self.headers.get("webhook-signature", "").split() if s.startswith("v1,")]
                with receiver._lock:
                    number = len(receiver.deliveries) + 1
                    receiver.deliveries.append(
                        {
                            "id": msg_id,
                            "timestamp": int(stamp or 0),
                            "valid": any(hmac.compare_digest(o.encode(), expected) for o in offered),
                            "body": json.loads(raw) if raw else None,
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                        }
                    )
                status, answer = (503, b"") if number <= fail_first else (200, json.dumps({"received": msg_id}).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., WebhookReceiver]]:
    """Factory of WebhookReceivers stopped when the test ends."""
    made: list[WebhookReceiver] = []

    def factory(secret: str = SIGNING_KEY, fail_first: int = 0) -> WebhookReceiver:
        made.append(WebhookReceiver(secret, fail_first))
        return made[-1]

    yield factory
    for receiver in made:
        receiver.stop()


def _no_services() -> Any:
    from actors.registry import ServiceRegistry

    return ServiceRegistry.from_mapping({"services": {}})


def _secrets_file(tmp_path: Path, **values: str) -> str:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps(values))
    return str(path)


def _webhook_pack(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "order-hooks",
        "name": "order hooks",
        "version": "1.0.0",
        "inputs": {"order": {"type": "string"}, "card": {"type": "string", "secret": True}},
        "steps": [
            {
                "id": "notify",
                "type": "webhook",
                "url": url,
                "signing_secret": "ORDER_HOOK_KEY",
                "headers": {"X-Api-Key": "${ secrets.API_KEY }"},
                "body": {"type": "order.paid", "data": {"order": "${ inputs.order }", "card": "${ inputs.card }"}},
                "outputs": {"received": "${ result.received }"},
                "on_error": {"retry": {"max_attempts": 3, "initial_delay_ms": 20}},
                **extra,
            }
        ],
        "outputs": {"received": "${ steps.notify.outputs.received }"},
    }


# --- webhooks ---------------------------------------------------------------------------------------


def test_webhook_is_signed_and_a_retry_keeps_its_webhook_id(
    engine_db: str, make_client: Any, receivers: Any, tmp_path: Path
) -> None:
    """A receiver that fails the first delivery gets a second one with the same webhook-id
    (``msg_`` + SHA-256 of the idempotency key), a valid signature each time, and the real
    values of the named secret header and the secret input; the run stores none of them."""
    receiver = receivers(fail_first=1)
    client = make_client(
        engine_db,
        _no_services(),
        secrets_file=_secrets_file(tmp_path, ORDER_HOOK_KEY=SIGNING_KEY, API_KEY=API_KEY),
        http_allowed_hosts=(f"127.0.0.1:{receiver.port}",),
    )
    execution_id = client.start(_webhook_pack(f"{receiver.url}/hooks/${{ inputs.order }}"), {"order": "o-17", "card": CARD})
    record = client.wait(execution_id, timeout_s=60)

    assert record["status"] == "completed", record
    first, second = receiver.deliveries
    expected_id = "msg_" + hashlib.sha256(f"{execution_id}/notify".encode()).hexdigest()[:32]
    assert first["id"] == second["id"] == expected_id
    assert first["valid"] and second["valid"]
    assert abs(second["timestamp"] - time.time()) < 60
    assert second["path"] == "/hooks/o-17" and second["headers"]["X-Api-Key"] == API_KEY
    assert second["body"] == {"type": "order.paid", "data": {"order": "o-17", "card": CARD}}
    assert record["outputs"] == {"received": expected_id}
    assert occurrences([CARD, API_KEY, SIGNING_KEY], database=dump_rows(engine_db), status=record) == []


def test_webhook_signed_with_another_key_is_rejected_by_the_receiver(
    engine_db: str, make_client: Any, receivers: Any, tmp_path: Path
) -> None:
    """The receiver's check is real: a delivery signed with a different key does not verify."""
    receiver = receivers()
    other_key = "whsec_" + base64.b64encode(b"some-other-key-0000").decode()
    client = make_client(
        engine_db,
        _no_services(),
        secrets_file=_secrets_file(tmp_path, ORDER_HOOK_KEY=other_key, API_KEY=API_KEY),
        http_allowed_hosts=(f"127.0.0.1:{receiver.port}",),
    )
    record = client.run(_webhook_pack(f"{receiver.url}/hooks"), {"order": "o-1", "card": CARD}, timeout_s=60)
    assert record["status"] == "completed"
    assert [d["valid"] for d in receiver.deliveries] == [False]


def test_webhook_to_a_host_off_the_allowlist_is_refused_and_never_sent(
    engine_db: str, make_client: Any, receivers: Any, tmp_path: Path
) -> None:
    """A webhook URL comes from the pack: the egress guard refuses loopback unless allowlisted;
    the step fails at once (not retried) and the receiver hears nothing."""
    receiver = receivers()
    client = make_client(
        engine_db, _no_services(), secrets_file=_secrets_file(tmp_path, ORDER_HOOK_KEY=SIGNING_KEY, API_KEY=API_KEY)
    )
    record = client.run(_webhook_pack(f"{receiver.url}/hooks"), {"order": "o-1", "card": CARD}, timeout_s=60)
    assert record["status"] == "failed"
    assert record["error_detail"]["kind"] == "egress_refused" and record["error_detail"]["attempts"] == 1
    assert receiver.deliveries == []


# --- named secrets -------------------------------------------------------------------------------------


def test_a_missing_secret_fails_the_step_once_naming_the_secret(
    engine_db: str, make_client: Any, tmp_path: Path
) -> None:
    """No value for ``${ secrets.NOT_CONFIGURED }``: the step fails without calling the service
    and without retries (a retry cannot make the value appear), naming the secret."""
    with StubServer({"hooks POST /v1/hook": "echo"}) as stub:
        client = make_client(engine_db, stub.registry(), secrets_file=_secrets_file(tmp_path, API_KEY=API_KEY))
        pack = {
            "id": "missing-secret",
            "name": "missing secret",
            "version": "1.0.0",
            "steps": [
                {
                    "id": "call",
                    "type": "service_call",
                    "service": "hooks",
                    "endpoint": "/v1/hook",
                    "method": "POST",
                    "headers": {"Authorization": "Bearer ${ secrets.NOT_CONFIGURED }", "X-Api-Key": "${ secrets.API_KEY }"},
                    "on_error": {"retry": {"max_attempts": 3, "initial_delay_ms": 10}},
                }
            ],
        }
        record = client.run(pack, {}, timeout_s=60)
        assert stub.count("hooks POST /v1/hook") == 0
    detail = record["error_detail"]
    assert record["status"] == "failed" and detail["kind"] == "secret_missing" and detail["attempts"] == 1
    assert "'NOT_CONFIGURED'" in record["error"] and "CORTX_SECRET_NOT_CONFIGURED" in record["error"]
    assert API_KEY not in json.dumps(record)


def test_an_upstream_that_echoes_secrets_in_a_2xx_body_has_them_masked_in_the_outputs(
    engine_db: str, make_client: Any, tmp_path: Path
) -> None:
    """Defence in depth: an upstream that answers 200 with the secrets it received (the body
    echoed) does not make them step outputs; the stored outputs carry ``***``."""
    with StubServer({"hooks POST /v1/echo": "echo"}) as stub:
        client = make_client(engine_db, stub.registry(), secrets_file=_secrets_file(tmp_path, API_KEY=API_KEY))
        pack = {
            "id": "echo-secrets",
            "name": "echo secrets",
            "version": "1.0.0",
            "inputs": {"card": {"type": "string", "secret": True}},
            "steps": [
                {
                    "id": "call",
                    "type": "service_call",
                    "service": "hooks",
                    "endpoint": "/v1/echo",
                    "method": "POST",
                    "inputs": {"key": "${ secrets.API_KEY }", "card": "card:${ inputs.card }"},
                }
            ],
            "outputs": {"echoed": "${ steps.call.outputs }"},
        }
        record = client.run(pack, {"card": CARD}, timeout_s=60)
        assert stub.bodies("hooks POST /v1/echo") == [{"key": API_KEY, "card": f"card:{CARD}"}]
    assert record["status"] == "completed", record
    assert record["outputs"] == {"echoed": {"key": "***", "card": "card:***"}}
    assert occurrences([CARD, API_KEY], database=dump_rows(engine_db)) == []


# --- secret inputs survive a crash ---------------------------------------------------------------------------


def test_secret_inputs_survive_a_crash_and_are_erased_when_the_run_ends(database_url: str) -> None:
    """The run's record holds ``***`` for a ``secret: true`` input and the secret store its
    value; an owner that dies mid-run leaves both, the next owner resumes the run and sends the
    real value, and the value is erased when the run ends."""
    from actors.execution import ExecutionActor
    from actors.runners import ThreadStepRunner
    from actors.settings import Settings
    from dsl.secrets import split_secret_inputs
    from dsl.validation import validate_document
    from persistence.store import open_store

    pack = {
        "id": "resume-secret",
        "name": "resume secret",
        "version": "1.0.0",
        "inputs": {"card": {"type": "string", "secret": True}},
        "steps": [
            {"id": "first", "type": "service_call", "service": "pay", "endpoint": "/v1/first", "method": "POST",
             "inputs": {"card": "${ inputs.card }"}},
            {"id": "second", "type": "service_call", "service": "pay", "endpoint": "/v1/second", "method": "POST",
             "inputs": {"card": "${ inputs.card }"}, "dependencies": ["first"]},
        ],
    }
    execution_id = "6f1c0a52-8d3e-4b7a-9c21-0e5d4f3a2b10"
    routes = {"pay POST /v1/first": "echo", "pay POST /v1/second": {"echo": True, "delay_ms": 1500}}

    async def scenario(stub: StubServer) -> dict[str, Any]:
        store = await open_store(database_url, pool_size=2)
        try:
            loaded = validate_document(pack, "pack")
            inputs, secret = split_secret_inputs(loaded.pack.input_schema(), {"card": CARD})
            await store.create_execution(
                execution_id=execution_id, workflow_pack_id=pack["id"], version="1.0.0", pack_document=pack,
                inputs=inputs, secret_inputs=secret, options={"max_retries": 0},
            )

            def owner() -> ExecutionActor:
                return ExecutionActor(
                    execution_id, store=store, registry=stub.registry(), settings=Settings(database_url=database_url),
                    runner=ThreadStepRunner(),
                )

            crashed = asyncio.ensure_future(owner().run())
            deadline = time.monotonic() + 30
            while stub.count("pay POST /v1/second") == 0:  # the second step is in flight
                assert time.monotonic() < deadline, "the second step never started"
                await asyncio.sleep(0.02)
            crashed.cancel()  # the owner dies mid-step (a host shutting down)
            with pytest.raises(asyncio.CancelledError):
                await crashed
            assert (await store.get_execution(execution_id)).inputs == {"card": "***"}
            assert await store.load_secret_inputs(execution_id) == {"card": CARD}

            final = await owner().run()  # the next owner resumes from the checkpoints
            assert await store.load_secret_inputs(execution_id) == {}
            return final
        finally:
            await store.close()

    with StubServer(routes) as stub:
        final = asyncio.run(asyncio.wait_for(scenario(stub), 60))
        assert final["status"] == "completed", final
        assert stub.bodies("pay POST /v1/first") == [{"card": CARD}]  # completed before the crash: not again
        assert stub.bodies("pay POST /v1/second") == [{"card": CARD}, {"card": CARD}]
    assert occurrences([CARD], database=dump_rows(database_url)) == []


def test_the_step_runner_reads_a_named_secret_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CORTX_SECRET_<NAME>`` of the process running the step's work is a source (here the
    thread runner's process); the value reaches the callee and is masked in what comes back."""
    from actors.runners import ThreadStepRunner
    from actors.scheduler import ServiceRequest
    from dsl.secrets import SecretRef, SecretText

    monkeypatch.setenv("CORTX_SECRET_ENV_ONLY_KEY", "env-value-7d21c0")
    with StubServer({"hooks POST /v1/echo": "echo"}) as stub:
        request = ServiceRequest(
            method="POST", url=f"{stub.url}/hooks/v1/echo", json_body={"key": SecretRef("ENV_ONLY_KEY")},
            headers={"Authorization": SecretText(("Token ", SecretRef("ENV_ONLY_KEY")))}, timeout_seconds=5,
            idempotency_key="run/step", execution_id="run", step_key="step", attempt=1,
        )
        result = asyncio.run(ThreadStepRunner().call_service(request))
        [received] = stub.requests("hooks POST /v1/echo")
    assert received.headers["Authorization"] == "Token env-value-7d21c0" and received.body == {"key": "env-value-7d21c0"}
    assert result["ok"] and result["body"] == {"key": "***"}


def test_a_registry_service_authenticates_with_a_secret_header_and_its_retry_defaults(
    engine_db: str, make_client: Any, tmp_path: Path
) -> None:
    """The registry's ``auth`` puts ``Bearer <secret>`` on every call, read only in the step
    task; its ``retry`` replaces DEFAULT_RETRY_COUNT for steps without their own policy."""
    from actors.registry import ServiceRegistry

    routes = {
        "payments POST /v1/charge": {"respond_script": {"first_n": 2, "status": 503, "then": {"status": 200, "body": {"ok": True}}}},
        "ledger POST /v1/entry": {"respond": [{"status": 503}]},
    }
    with StubServer(routes) as stub:
        registry = ServiceRegistry.from_mapping({"services": {
            "payments": {"base_url": f"{stub.url}/payments",
                         "auth": {"scheme": "Bearer", "secret": "API_KEY"},
                         "retry": {"max_attempts": 3, "initial_delay_ms": 10, "max_delay_ms": 10}},
            "ledger": {"base_url": f"{stub.url}/ledger", "retry": {"max_attempts": 1}},
        }})
        client = make_client(engine_db, registry, secrets_file=_secrets_file(tmp_path, API_KEY=API_KEY))
        charge = {"id": "charge", "type": "service_call", "service": "payments", "endpoint": "/v1/charge", "inputs": {}}
        paid = client.run({"id": "pay", "name": "pay", "version": "1.0.0", "steps": [charge]}, {}, timeout_s=60)
        entry = {"id": "entry", "type": "service_call", "service": "ledger", "endpoint": "/v1/entry", "inputs": {}}
        booked = client.run({"id": "book", "name": "book", "version": "1.0.0", "steps": [entry]}, {}, timeout_s=60)
        sent = stub.requests("payments POST /v1/charge")
        ledger_calls = stub.count("ledger POST /v1/entry")
    assert paid["status"] == "completed", paid.get("error")
    assert [r.headers.get("Authorization") for r in sent] == [f"Bearer {API_KEY}"] * 3  # 2 failures, then success
    assert booked["status"] == "failed" and ledger_calls == 1  # the registry says one attempt (default: 4)
    stored = stored_checkpoints(engine_db, paid["execution_id"])
    assert API_KEY not in json.dumps([c.to_dict() for c in stored]) and API_KEY not in json.dumps(paid)
