"""The ``http`` step in the DSL: its model, expected statuses, URL form, schema and graph."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from dsl.errors import PackValidationError
from dsl.graph import to_mermaid
from dsl.http_spec import parse_status_spec, status_matches, url_form_problem
from dsl.models import HttpStep
from dsl.schema import pack_json_schema
from dsl.validation import validate_document


def pack(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"id": "p", "name": "p", "version": "1", "steps": list(steps)}


def http(**fields: Any) -> dict[str, Any]:
    return {"id": "call", "type": "http", "url": "https://api.example.com/v1", **fields}


def test_defaults_and_frozen() -> None:
    step = HttpStep.model_validate(http(method="post", body={"a": "${ inputs.a }"}))
    assert step.method == "POST" and step.expected_status == ("2xx",) and step.timeout_seconds is None
    assert step.query == {} and step.headers == {}
    with pytest.raises(ValidationError):
        step.url = "https://other.example.com"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        HttpStep.model_validate(http(service="x"))
    assert HttpStep.model_validate(http(method="get")).method == "GET"


@pytest.mark.parametrize(
    ("item", "pair"),
    [(200, (200, 200)), ("404", (404, 404)), ("2xx", (200, 299)), ("4XX", (400, 499)), ("200-204", (200, 204)),
     ("300 - 399", (300, 399))],
)
def test_expected_status_forms(item: Any, pair: tuple[int, int]) -> None:
    assert parse_status_spec(item) == pair


@pytest.mark.parametrize("item", [99, 600, "6xx", "2XY", "299-200", "abc", True, 2.5, None, "1000"])
def test_malformed_expected_status_is_refused(item: Any) -> None:
    with pytest.raises(ValueError):
        parse_status_spec(item)


def test_status_matching() -> None:
    assert status_matches(204, ["2xx"]) and not status_matches(301, ["2xx"])
    assert status_matches(404, [200, "404"]) and status_matches(302, ["300-302"]) and not status_matches(303, ["300-302"])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api.example.com/x", None),
        ("${ inputs.url }", None),
        ("http${ inputs.secure ? 's' : '' }://api.example.com", None),
        ("https://${ inputs.host }/v1", None),
        ("ftp://example.com/${ inputs.f }", "scheme"),
        ("api.example.com/${ inputs.p }", "must start with"),
        ("https:///path", "no host"),
        ("https://example.com:99999/", "cannot be parsed"),
        (" https://example.com", "white space"),
    ],
)
def test_url_form(url: str, problem: str | None) -> None:
    found = url_form_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_validation_points_at_the_field() -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document(pack(http(expected_status=[]), {**http(), "id": "b", "timeout_seconds": 0}))
    pointers = {(i.code, i.pointer) for i in caught.value.issues}
    assert ("invalid_value", "/steps/0/expected_status") in pointers
    assert ("invalid_value", "/steps/1/timeout_seconds") in pointers


@pytest.mark.parametrize("name", ["Host", "content-length", "Transfer-Encoding", "connection"])
def test_transport_headers_are_refused_at_their_pointer(name: str) -> None:
    with pytest.raises(PackValidationError) as caught:
        validate_document(pack(http(headers={name: "x", "X-Ok": "1"})))
    (issue,) = caught.value.issues
    assert issue.pointer.startswith("/steps/0/headers") and "set by the HTTP client" in issue.message


def test_schema_export_and_graph_include_the_http_step() -> None:
    schema = pack_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    good = pack(http(method="POST", body={"x": 1}, expected_status=[200, "4xx"], query={"q": "a"}))
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(pack(http(method="FETCH"))))
    assert list(validator.iter_errors(pack(http(extra=1))))
    assert "HttpStep" in schema["$defs"]
    url_doc = schema["$defs"]["HttpStep"]["properties"]["timeout_seconds"]
    assert "in s" in str(url_doc)

    loaded = validate_document(pack(http(url="https://api.example.com/rates/${ inputs.c }")))
    text = to_mermaid(loaded.pack)
    assert 's_call["call<br/>GET https://api.example.com/rates/$( inputs.c )"]' in text
