"""W3C traceparent values: one trace id per run, a span id per attempt."""

from __future__ import annotations

import re
import uuid

import pytest

from actors.tracing import format_traceparent, new_span_id, parse_traceparent, trace_id_for

W3C = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


def test_a_uuid_execution_id_is_its_own_trace_id() -> None:
    execution_id = str(uuid.uuid4())
    assert trace_id_for(execution_id) == uuid.UUID(execution_id).hex
    assert trace_id_for(execution_id.upper()) == trace_id_for(execution_id)


def test_other_execution_ids_hash_to_a_stable_trace_id() -> None:
    first = trace_id_for("loan-42")
    assert first == trace_id_for("loan-42") != trace_id_for("loan-43")
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert trace_id_for(str(uuid.UUID(int=0))) != "0" * 32  # all-zero is invalid in W3C


def test_traceparent_is_well_formed_and_round_trips() -> None:
    trace_id = trace_id_for(str(uuid.uuid4()))
    spans = {new_span_id() for _ in range(200)}
    assert len(spans) == 200 and "0" * 16 not in spans
    value = format_traceparent(trace_id, spans.pop())
    assert W3C.match(value) and value.endswith("-01")
    assert parse_traceparent(value) == (trace_id, value[36:52], "01")


@pytest.mark.parametrize(
    "value",
    [None, "", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
     "01-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "A" * 32 + "-" + "b" * 16 + "-01", "00-abc-def-01"],
)
def test_malformed_traceparents_are_refused(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_format_refuses_bad_ids() -> None:
    with pytest.raises(ValueError):
        format_traceparent("xyz", new_span_id())
