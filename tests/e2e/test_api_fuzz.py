"""Property-based fuzz of the whole HTTP API from its own OpenAPI document (schemathesis).

The API runs as in ``test_api.py`` (uvicorn on a free loopback port, the session's Ray, the
demo services, API keys configured) on SQLite and on PostgreSQL. The OpenAPI document is
loaded from the running server with a key; every operation in it is fuzzed, statelessly,
with data that fits the document (positive) and data that breaks it (negative), a bounded
number of examples each (``POSITIVE_EXAMPLES`` + ``NEGATIVE_EXAMPLES``), then
``SEEDED_EXAMPLES`` more on a real pack and run (their ids pinned in the path), so the 200
answers are checked too; about 10 s per database. Hypothesis runs derandomized (the same
cases every run); raise the constants for a deeper search. Every answer is checked:

* ``not_a_server_error`` — no 5xx, ever;
* ``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``,
  ``response_headers_conformance`` — the status, media type, body and headers are the ones
  the document declares (problems are ``application/problem+json`` ``Problem`` objects);
* ``negative_data_rejection`` — a request that breaks the document is refused with a 4xx.

Failures of every operation are collected and reported together, each with the request
that reproduces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase

from tests.e2e.api_server import ADMIN, Api, echo_pack, new_id, running_api, wait_for

pytestmark = pytest.mark.ray

#: Examples per operation that fit the document, and that break it.
POSITIVE_EXAMPLES = 25
NEGATIVE_EXAMPLES = 15
#: Examples per operation on the seeded pack and run (real ids in the path).
SEEDED_EXAMPLES = 10
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, ray_session: None, demo_services: Any, tmp_path_factory: Any) -> Iterator[Api]:
    """The API with keys configured, served by uvicorn, on SQLite and on PostgreSQL."""
    with running_api(request, demo_services.url, tmp_path_factory, "fuzz", timeout_s=60.0) as api:
        yield api


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
            response_headers_conformance, negative_data_rejection]


def _fuzz(operation: Any, mode: Any, examples: int, base_url: str, **fixed: Any) -> None:
    """Run ``examples`` cases of one operation in one generation mode; raise on the first failing check.

    ``fixed``: ``as_strategy`` arguments that pin parts of the request (path parameters, body).
    """
    checks = _checks()

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def run(case: Any) -> None:
        # The document's security scheme makes schemathesis send a made-up bearer key; send the real
        # one instead, unless a negative case left the header out on purpose (then 401 is the answer).
        headers = AUTH if "Authorization" in (case.headers or {}) else None
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=checks, headers=headers)

    run()


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


def _seed(api: Api) -> dict[str, Any]:
    """A deployed pack and a completed run, so that fuzzing reaches the 200 answers too."""
    pack_id = new_id("fuzz")
    with api.client() as client:
        assert client.post("/v1/packs", json=echo_pack(pack_id)).status_code == 201
        accepted = client.post("/v1/workflows/execute", json={"workflow_pack_id": pack_id, "inputs": {"n": 2}})
        assert accepted.status_code == 202, accepted.text
        execution_id = accepted.json()["execution_id"]
        assert wait_for(client, execution_id, {"completed", "failed"})["status"] == "completed"
    return {"pack_id": pack_id, "version": "1.0.0", "execution_id": execution_id}


@pytest.mark.timeout(240)
def test_fuzz_every_operation_no_5xx_and_answers_match_the_openapi_document(api: Api) -> None:
    from schemathesis import GenerationMode

    seeded = _seed(api)
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", headers=AUTH, timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    # Every route of the app is in the document (and so is fuzzed).
    assert {"POST /v1/workflows/execute", "GET /v1/workflows/executions", "GET /v1/workflows/executions/{execution_id}",
            "POST /v1/workflows/executions/{execution_id}/cancel", "GET /v1/workflows/executions/{execution_id}/steps",
            "GET /v1/workflows/executions/{execution_id}/events",
            "GET /v1/workflows/executions/{execution_id}/events/stream", "POST /v1/packs", "GET /v1/packs",
            "GET /v1/packs/{pack_id}/versions", "GET /v1/packs/{pack_id}/versions/{version}",
            "POST /v1/packs/{pack_id}/versions/{version}/deprecate", "GET /healthz", "GET /readyz"} <= labels, labels

    failures: list[str] = []

    def fuzz(operation: Any, mode: Any, examples: int, **fixed: Any) -> None:
        try:
            _fuzz(operation, mode, examples, api.url, **fixed)
        except hypothesis.errors.Unsatisfiable:
            # Nothing to break: no parameters, no body (GET /healthz).
            assert mode is GenerationMode.NEGATIVE and not _has_inputs(operation), operation.label
        except Exception as exc:  # noqa: BLE001 - collected, reported below with the reproduction
            failures.append(f"{operation.method.upper()} {operation.path} [{mode.value} {fixed}]: {exc}")

    for operation in operations:
        fuzz(operation, GenerationMode.POSITIVE, POSITIVE_EXAMPLES)
        fuzz(operation, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
        # Again on the seeded pack and run: the other parameters and headers still vary.
        names = {p.name for p in operation.iter_parameters() if p.location == "path"}
        if names:
            fuzz(operation, GenerationMode.POSITIVE, SEEDED_EXAMPLES, path_parameters={n: seeded[n] for n in names})
        elif operation.label == "POST /v1/workflows/execute":
            body = {"workflow_pack_id": seeded["pack_id"], "inputs": {"n": 3}}
            fuzz(operation, GenerationMode.POSITIVE, SEEDED_EXAMPLES, body=body, media_type="application/json")
    assert not failures, "\n\n".join(failures)
