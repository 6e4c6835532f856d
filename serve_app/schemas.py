"""Request and response shapes of the HTTP API, and strict request-body reading.

Requests (FDD §3.1)::

    ExecuteRequest  {"workflow_pack_id": str, "version"?: str, "inputs"?: {...},
                     "options"?: {"timeout_seconds"?: number > 0, "max_retries"?: int >= 0,
                                  "isolation"?: "shared" | "dedicated"}}

Unknown fields are refused and types are strict (``"300"`` is not a number). Bodies are
read by :func:`read_json`, which refuses what JSON or the database cannot hold: invalid
UTF-8, syntax errors (400 with line and column), ``NaN``/``Infinity``, nesting deeper than
:data:`MAX_DEPTH`, and strings with NUL characters or unpaired surrogates (422).

Responses are plain dicts: :func:`accepted_body` (§3.1) is built here; :func:`pack_summary`
and :func:`pack_detail` (pack deployment, :mod:`persistence.packs`) and :func:`step_history`
(the checkpoints, :mod:`persistence.history`) are built one layer down, where the Python
driver builds the same answers, and re-exported here.
The pydantic models below (``AcceptedExecution`` ... ``Problem``) only *document* them in
the OpenAPI document (:func:`documented`); handlers do not serialize through them. The
fuzz test (``tests/e2e/test_api_fuzz.py``) checks every answer against them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dsl.state import ExecutionStatus, StepStatus
from persistence.history import step_history
from persistence.packs import pack_detail, pack_summary
from persistence.validation import check_storable
from serve_app.errors import BadRequestError, UnsupportedMediaTypeError

__all__ = [
    "JSON_TYPES",
    "MAX_DEPTH",
    "PROBLEM_DESCRIPTIONS",
    "SSE_EVENT_SCHEMA",
    "SSE_MEDIA_TYPE",
    "YAML_TYPES",
    "AcceptedExecution",
    "ExecuteOptions",
    "ExecuteRequest",
    "ExecutionEvent",
    "ExecutionEvents",
    "ExecutionListItem",
    "ExecutionPage",
    "ExecutionStatusName",
    "ExecutionStatusRecord",
    "Health",
    "PackDeployed",
    "PackDetail",
    "PackList",
    "PackSummary",
    "PackVersions",
    "Problem",
    "QueueDepth",
    "Readiness",
    "StepAttempt",
    "StepHistory",
    "documented",
    "accepted_body",
    "check_storable",
    "media_type",
    "pack_detail",
    "pack_summary",
    "parse_model",
    "read_json",
    "read_text",
    "step_history",
]

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
#: Deepest nesting of arrays/objects accepted in a JSON body.
MAX_DEPTH = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ExecuteOptions(_Strict):
    """FDD §3.1 ``options``; omitted fields fall back to the engine's settings."""

    timeout_seconds: float | None = Field(None, gt=0, le=30 * 86_400, description="Run timeout in s.")
    max_retries: int | None = Field(None, ge=0, le=1000, description="Retries for steps without a policy.")
    isolation: Literal["shared", "dedicated"] | None = Field(None, description="Override the pack's isolation.")


class ExecuteRequest(_Strict):
    """FDD §3.1 body of ``POST /v1/workflows/execute``."""

    workflow_pack_id: str = Field(min_length=1, max_length=200)
    version: str | None = Field(None, min_length=1, max_length=64, description="Omitted: latest not deprecated.")
    inputs: dict[str, Any] = Field(default_factory=dict)
    options: ExecuteOptions = Field(default_factory=ExecuteOptions)

    def engine_options(self) -> dict[str, Any]:
        """The options stored with the run (``isolation`` is not one: it picks the host)."""
        return self.options.model_dump(exclude_none=True, exclude={"isolation"})


def media_type(request: Request) -> str:
    """The request's media type, lower-case, without parameters (``""`` when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(kind: str) -> bool:
    return kind in JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json"))


async def read_text(request: Request) -> str:
    """The body as UTF-8 text.

    Raises:
        BadRequestError: not UTF-8.
    """
    raw = await request.body()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the body is not UTF-8 text (byte {exc.start})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests deeper than ``limit`` (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


async def read_json(request: Request) -> Any:
    """Parse a JSON request body strictly (see the module docstring).

    Raises:
        UnsupportedMediaTypeError: the Content-Type is not JSON.
        BadRequestError: the body is not UTF-8 JSON, or holds NaN/Infinity, or nests too deep.
        UnstorableValueError: a string the database cannot store.
    """
    kind = media_type(request)
    if not _is_json(kind):
        raise UnsupportedMediaTypeError(kind, JSON_TYPES)
    text = await read_text(request)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError(f"the body nests deeper than {MAX_DEPTH} levels") from None
    if _depth(value, MAX_DEPTH):
        raise BadRequestError(f"the body nests deeper than {MAX_DEPTH} levels")
    check_storable(value)
    return value


def parse_model(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data`` against ``model``; errors become FastAPI's RequestValidationError (422)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from None


# --------------------------------------------------------------------------- responses


def accepted_body(record: dict[str, Any]) -> dict[str, Any]:
    """FDD §3.1 answer: ``{"execution_id", "status", "started_at"}`` from a status record."""
    return {"execution_id": record["execution_id"], "status": record["status"], "started_at": record["started_at"]}


# --------------------------------------------------------------------------- documented shapes

#: Execution statuses (the values of dsl.state.ExecutionStatus, defined there once).
ExecutionStatusName = ExecutionStatus
_TIME = {"format": "date-time"}


class _Doc(BaseModel):
    """A response shape (documentation only; see the module docstring)."""

    model_config = ConfigDict(extra="allow")


class AcceptedExecution(_Doc):
    """FDD §3.1 answer of ``POST /v1/workflows/execute``."""

    model_config = ConfigDict(extra="forbid")
    execution_id: str = Field(json_schema_extra={"format": "uuid"})
    status: ExecutionStatusName
    started_at: str | None = Field(json_schema_extra=_TIME)


class ExecutionStatusRecord(_Doc):
    """FDD §3.2 status record (``ExecutionRecord.to_status_dict()``)."""

    model_config = ConfigDict(extra="forbid")
    execution_id: str = Field(json_schema_extra={"format": "uuid"})
    workflow_pack_id: str
    version: str
    status: ExecutionStatusName
    started_at: str | None = Field(json_schema_extra=_TIME)
    completed_at: str | None = Field(json_schema_extra=_TIME)
    current_step: str | None
    completed_steps: list[str]
    outputs: dict[str, Any] | None
    duration_ms: int | None = Field(ge=0)
    error: str | None
    error_detail: dict[str, Any] | None


class ExecutionListItem(ExecutionStatusRecord):
    """A status record plus ``created_at`` (the listing's sort key)."""

    created_at: str = Field(json_schema_extra=_TIME)


class ExecutionPage(_Doc):
    """One page of ``GET /v1/workflows/executions``, newest first."""

    model_config = ConfigDict(extra="forbid")
    items: list[ExecutionListItem]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page; null on the last page.")


class StepAttempt(_Doc):
    """One attempt of one step (a checkpoint)."""

    model_config = ConfigDict(extra="forbid")
    step_key: str
    step_id: str
    step_type: str
    attempt: int = Field(ge=1)
    status: StepStatus
    outputs: Any = None
    error: dict[str, Any] | None
    idempotency_key: str | None
    started_at: str = Field(json_schema_extra=_TIME)
    ended_at: str = Field(json_schema_extra=_TIME)
    duration_ms: int = Field(ge=0)
    node_id: str | None = Field(
        description="Hex id of the Ray node the attempt ran on; null for control steps (evaluated in the "
                    "ExecutionActor) and for attempts whose task was lost."
    )


class StepHistory(_Doc):
    """``GET .../steps``: one entry per step attempt, by end time."""

    model_config = ConfigDict(extra="forbid")
    execution_id: str = Field(json_schema_extra={"format": "uuid"})
    status: ExecutionStatusName
    current_step: str | None
    steps: list[StepAttempt]


class ExecutionEvent(_Doc):
    """One event of a run. Members besides ``seq``, ``type`` and ``at`` depend on the type."""

    seq: int = Field(ge=1, description="Increasing within one source (the SSE ``id``); outbox: 1, 2, 3, ... per run.")
    type: str = Field(description="execution.started|resumed|completed|failed|cancelled, step.started|completed|"
                                  "failed|skipped|cancelled|retrying, ...")
    at: str = Field(json_schema_extra=_TIME)
    step_key: str | None = None
    step_type: str | None = None
    attempt: int | None = None
    duration_ms: int | None = None
    delay_ms: int | None = None
    error: str | None = None
    synthesized: bool | None = Field(None, description="True for events rebuilt from checkpoints.")
    event_id: str | None = Field(None, description="Outbox events: stable id, the webhook-id of its deliveries.")


class ExecutionEvents(_Doc):
    """``GET .../events``: the run's events with ``seq`` above ``after``."""

    model_config = ConfigDict(extra="forbid")
    execution_id: str = Field(json_schema_extra={"format": "uuid"})
    status: ExecutionStatusName
    source: Literal["outbox", "host", "checkpoints"] = Field(
        description="outbox: stored with each state change (durable); host: the live events of the host running "
        "(or that ran) it; checkpoints: synthesized."
    )
    done: bool = Field(description="The run has ended (the last event is its final execution event).")
    more: bool | None = Field(None, description="outbox: more events follow; ask again with `after` = the last seq.")
    events: list[ExecutionEvent]


class PackSummary(_Doc):
    """A deployed pack version."""

    model_config = ConfigDict(extra="forbid")
    id: str
    version: str
    name: str | None
    description: str | None
    deprecated: bool
    created_at: str = Field(json_schema_extra=_TIME)
    content_hash: str = Field(pattern="^[0-9a-f]{64}$")
    steps: int = Field(ge=0)


class PackWarning(_Doc):
    """A validation warning of a deployed pack."""

    pointer: str
    message: str
    code: str
    line: int | None = None
    column: int | None = None


class PackDeployed(PackSummary):
    """``POST /v1/packs``: the summary, whether it was new, and warnings."""

    created: bool
    warnings: list[PackWarning]


class PackDetail(PackSummary):
    """One version with its validated document and its source text."""

    document: dict[str, Any]
    source: str | None


class PackList(_Doc):
    """Every version of every pack."""

    model_config = ConfigDict(extra="forbid")
    packs: list[PackSummary]


class PackVersions(_Doc):
    """The versions of one pack and the one an execute without version runs."""

    model_config = ConfigDict(extra="forbid")
    id: str
    latest: str | None
    versions: list[PackSummary]


class Health(_Doc):
    """Liveness."""

    status: Literal["ok"]


class QueueDepth(_Doc):
    """Admission control (FDD §9.2, §10): the deployment's limit and how many runs run and wait."""

    max_concurrent_executions: int = Field(description="Runs allowed to be running at once (CORTX_MAX_CONCURRENT_EXECUTIONS).")
    running: int = Field(description="Runs running now (admitted).")
    queued: int = Field(description="Runs accepted and waiting for a slot; they start oldest first.")


class Readiness(_Doc):
    """Readiness: every dependency answered."""

    status: Literal["ready"]
    checks: dict[str, str]


class ProblemIssue(_Doc):
    """One issue of a validation problem."""

    pointer: str = Field(description="JSON pointer into the request body ('' for parameters and headers).")
    message: str
    code: str
    parameter: str | None = Field(None, description="e.g. query.limit, header.Last-Event-ID")
    line: int | None = None
    column: int | None = None
    severity: str | None = None


class Problem(_Doc):
    """RFC 9457 problem details; members such as ``execution_id``, ``required_scope`` or ``checks`` may follow."""

    type: str = Field(json_schema_extra={"format": "uri"})
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None
    code: str
    errors: list[ProblemIssue] | None = None


#: Descriptions of the problem statuses an operation may answer.
PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "body_malformed, pack_unreadable, idempotency_key_invalid",
    401: "unauthorized: no or unknown bearer key",
    403: "forbidden: the key lacks the scope",
    404: "execution_not_found, pack_not_found",
    408: "body_timeout: the body did not all arrive in time",
    409: "pack_conflict, execution_finished",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "request_invalid (parameters or body), pack_invalid, inputs_invalid, ...",
    503: "configuration_invalid, database_unavailable, engine_unavailable, event_streams_exhausted, not_ready",
}
_PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
SSE_MEDIA_TYPE = "text/event-stream"
#: One message of an event stream (OpenAPI 3.1: the ``schema`` of an SSE media type describes each event).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One Server-Sent Event; ``data`` is an ExecutionEvent as JSON. Comment lines "
                   "(``: keep-alive``) are not events.",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "The event's seq."},
        "event": {"type": "string", "pattern": "^(execution|step)\\.[a-z_]+$", "description": "The event's type."},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/ExecutionEvent"}},
    },
}


def documented(
    model: type[BaseModel] | None,
    *problems: int,
    status: int = 200,
    description: str = "OK",
    media: str | None = None,
    headers: dict[str, str] | None = None,
    also: tuple[int, ...] = (),
) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for an operation: its success answer and its problems.

    Args:
        model: the success body's model (None with ``media``: a non-JSON body).
        problems: statuses of the problems it may answer (besides ``default``: any problem).
        status: the success status.
        description: the success description.
        media: non-JSON success media type (e.g. ``text/event-stream``).
        headers: success response headers, ``{name: description}``.
        also: further success statuses with the same body (e.g. 200 for a redeploy).
    """
    if media is not None:
        content: dict[str, Any] = {media: {"schema": SSE_EVENT_SCHEMA if media == SSE_MEDIA_TYPE else {"type": "string"}}}
        success: dict[str, Any] = {"description": description, "content": content}
    else:
        success = {"description": description, "model": model}
    if headers:
        success["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    answers: dict[int | str, dict[str, Any]] = {status: success}
    for extra in also:
        answers[extra] = dict(success)
    for code in problems:
        answers[code] = {"description": PROBLEM_DESCRIPTIONS.get(code, "problem"), "content": _PROBLEM_CONTENT}
    answers["default"] = {"description": "any other problem (RFC 9457), e.g. 500 internal_error",
                          "content": _PROBLEM_CONTENT}
    return answers
