"""Event subscriptions configuration, retry delays, the emit step's rules and the events of a step (no Ray)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.events_delivery import Subscription, ledger_subscription, parse_subscriptions, retry_delay_ms
from actors.outbox_events import compensation_targets, ended_events
from actors.registry import ServiceRegistry
from actors.settings import Settings
from dsl.errors import ConfigurationError, PackValidationError
from dsl.models import WorkflowPack
from dsl.validation import validate_document
from persistence.records import StepCheckpoint


def _one(**fields: object) -> dict:
    return {"subscriptions": [{"name": "hook", "url": "https://hooks.example.com/x", "signing_secret": "KEY", **fields}]}


def test_subscriptions_parse_with_defaults() -> None:
    (sub,) = parse_subscriptions(_one(events=["step.*", "execution.completed"]))
    assert (sub.name, sub.kind, sub.initial_delay_ms, sub.max_delay_ms, sub.timeout_seconds) == ("hook", "webhook", 500, 60_000, 10.0)
    assert sub.wants("step.failed") and sub.wants("execution.completed") and not sub.wants("execution.failed")
    assert parse_subscriptions(None) == ()


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"url": "ftp://x"}, "subscriptions[0].url"),
        ({"url": "http://user:pw@x/"}, "subscriptions[0].url"),
        ({"signing_secret": "not a name"}, "subscriptions[0].signing_secret"),
        ({"events": []}, "subscriptions[0].events"),
        ({"colour": "red"}, "subscriptions[0].colour"),
        ({"initial_delay_ms": 0}, "subscriptions[0].initial_delay_ms"),
        ({"initial_delay_ms": 900, "max_delay_ms": 800}, "subscriptions[0].max_delay_ms"),
        ({"name": "ledger-audit"}, "subscriptions[0].name"),
    ],
)
def test_bad_subscriptions_name_the_field(fields: dict, path: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_subscriptions(_one(**fields))
    assert path in caught.value.name


def test_duplicate_names_and_bad_files_fail_at_start(tmp_path: Path) -> None:
    doc = {"subscriptions": _one()["subscriptions"] * 2}
    with pytest.raises(ConfigurationError, match="unique"):
        parse_subscriptions(doc)
    bad = tmp_path / "subs.yaml"
    bad.write_text("subscriptions: [")
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"CORTX_EVENT_SUBSCRIPTIONS": str(bad)})
    assert caught.value.name == "CORTX_EVENT_SUBSCRIPTIONS"
    good = tmp_path / "subs.json"
    good.write_text('{"subscriptions": [{"name": "a", "url": "http://h/x", "signing_secret": "K"}]}')
    settings = Settings.from_env({"CORTX_EVENT_SUBSCRIPTIONS": str(good), "CORTX_LEDGER_AUDIT": "false"})
    assert [s.name for s in settings.event_subscriptions] == ["a"] and settings.ledger_audit is False


def test_retry_delay_doubles_up_to_the_cap() -> None:
    sub = Subscription(name="s", url="http://h/", initial_delay_ms=100, max_delay_ms=1000)
    assert [retry_delay_ms(sub, n) for n in (1, 2, 3, 4, 5, 100)] == [100, 200, 400, 800, 1000, 1000]


def test_the_ledger_subscription_comes_from_the_registry() -> None:
    registry = ServiceRegistry.from_mapping({"services": {"ledger": {"base_url": "http://ledger.local/ledger/",
                                                                      "headers": {"X-Client": "cortx"}}}})
    sub = ledger_subscription(registry)
    assert sub is not None and sub.kind == "ledger" and sub.url == "http://ledger.local/ledger/v1/audit"
    assert sub.headers == {"X-Client": "cortx"} and sub.wants("anything.at.all")
    assert ledger_subscription(ServiceRegistry.from_mapping({"services": {}})) is None


def _pack(step: dict) -> dict:
    return {"id": "p", "name": "p", "version": "1.0.0", "inputs": {"card": {"type": "string", "secret": True}},
            "steps": [step]}


def test_emit_step_rules() -> None:
    ok = validate_document(_pack({"id": "e", "type": "emit", "event_type": "order.approved", "data": {"x": "${ 1 + 1 }"}}))
    assert ok.pack.steps[0].type == "emit"
    for event_type, code_or_text in (("step.completed", "reserved"), ("Order Approved", "pattern")):
        with pytest.raises(PackValidationError) as caught:
            validate_document(_pack({"id": "e", "type": "emit", "event_type": event_type}))
        assert any(i.pointer == "/steps/0/event_type" for i in caught.value.issues), caught.value.issues
    # Secrets never go into events: neither named secrets nor secret inputs.
    for data in ({"k": "${ secrets.API_KEY }"}, {"k": "${ inputs.card }"}):
        with pytest.raises(PackValidationError) as caught:
            validate_document(_pack({"id": "e", "type": "emit", "event_type": "a.b", "data": data}))
        assert [i.code for i in caught.value.issues] == ["secret_not_allowed_here"]
        assert caught.value.issues[0].pointer == "/steps/0/data/k"
    with pytest.raises(PackValidationError) as caught:
        validate_document(_pack({"id": "e", "type": "emit", "event_type": "a.b", "data": "${ steps.nope.outputs }"}))
    assert caught.value.issues[0].pointer == "/steps/0/data"


def test_events_of_a_fallback_and_a_compensation() -> None:
    pack = WorkflowPack.model_validate({
        "id": "p", "name": "p", "version": "1", "steps": [
            {"id": "a", "type": "emit", "event_type": "a.b",
             "on_error": {"compensate": [{"id": "undo", "type": "emit", "event_type": "c.d", "compensates": "a"}]}}]})
    targets = compensation_targets(pack)
    assert targets == {"undo": "a"}
    start = datetime.now(UTC)

    def cp(step_id: str, error: dict | None) -> StepCheckpoint:
        return StepCheckpoint(execution_id="e", step_key=step_id, attempt=2, step_id=step_id, step_type="service_call",
                              status="completed", outputs={"secret": "s3cr3t-value"}, error=error, idempotency_key=None,
                              started_at=start, ended_at=start + timedelta(milliseconds=5))

    recovered = cp("a", {"kind": "recovered_by_fallback", "cause": {"kind": "http_5xx", "message": "HTTP 503 s3cr3t-value"}})
    events = ended_events(recovered, compensations=targets, emitted=None, masked=["s3cr3t-value"])
    assert [e.type for e in events] == ["step.fallback", "step.completed"]
    assert events[0].payload == {"step_type": "service_call", "error": "HTTP 503 ***", "kind": "http_5xx"}
    assert "s3cr3t-value" not in repr(events)  # outputs never go into events; messages are masked
    undo = ended_events(cp("undo", None), compensations=targets, emitted=None, masked=[])
    assert [(e.type, e.payload.get("compensates")) for e in undo] == [("step.completed", None), ("step.compensated", "a")]
