"""Request and response shapes of the HTTP API, and strict request-body reading.

Requests (FDD §3.1)::

    ExecuteRequest  {"workflow_pack_id": str, "version"?: str, "inputs"?: {...},
                     "options"?: {"timeout_seconds"?: number > 0, "max_retries"?: int >= 0,
                                  "isolation"?: "shared" | "dedicated"}}

Unknown fields are refused and types are strict (``"300"`` is not a number). Bodies are
read by :func:`read_json`, which refuses what JSON or the database cannot hold: invalid
UTF-8, syntax errors (400 with line and column), ``NaN``/``Infinity``, nesting deeper than
:data:`MAX_DEPTH`, and strings with NUL characters or unpaired surrogates (422).

Responses are plain dicts built here: :func:`accepted_body` (§3.1), :func:`pack_summary`
and :func:`pack_detail` (pack deployment), :func:`step_history` (the checkpoints).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dsl.loader import escape_pointer
from persistence.records import ExecutionRecord, PackRecord, StepCheckpoint, isoformat_z
from serve_app.errors import BadRequestError, UnstorableValueError, UnsupportedMediaTypeError

__all__ = [
    "JSON_TYPES",
    "MAX_DEPTH",
    "YAML_TYPES",
    "ExecuteOptions",
    "ExecuteRequest",
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


def check_storable(value: Any, pointer: str = "") -> None:
    """Refuse strings (keys too) that PostgreSQL cannot store: NUL and unpaired surrogates.

    Raises:
        UnstorableValueError: with the JSON pointer of the first such string.
    """
    stack: list[tuple[Any, str]] = [(value, pointer)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if not _storable(node):
                raise UnstorableValueError(where)
        elif isinstance(node, dict):
            for key, child in node.items():
                child_pointer = f"{where}/{escape_pointer(key)}"
                if not _storable(str(key)):
                    raise UnstorableValueError(child_pointer)
                stack.append((child, child_pointer))
        elif isinstance(node, list):
            stack.extend((child, f"{where}/{i}") for i, child in enumerate(node))


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def pack_summary(record: PackRecord) -> dict[str, Any]:
    """``{id, version, name, description, deprecated, created_at, content_hash, steps}``."""
    doc = record.document
    return {
        "id": record.pack_id,
        "version": record.version,
        "name": doc.get("name"),
        "description": doc.get("description"),
        "deprecated": record.deprecated,
        "created_at": isoformat_z(record.created_at),
        "content_hash": record.content_hash,
        "steps": _count_steps(doc.get("steps") or []),
    }


def pack_detail(record: PackRecord) -> dict[str, Any]:
    """:func:`pack_summary` plus ``document`` (the validated pack) and ``source`` (text as deployed)."""
    return {**pack_summary(record), "document": record.document, "source": record.source_text}


def _count_steps(steps: list[Any]) -> int:
    """Steps at every level (nested lists and error handlers included)."""
    count, stack = 0, list(steps)
    while stack:
        step = stack.pop()
        if not isinstance(step, dict):
            continue
        count += 1
        for field in ("steps", "then", "else", "default"):
            stack.extend(step.get(field) or [])
        for case in step.get("cases") or []:
            stack.extend(case.get("steps") or [])
        handler = step.get("on_error") or {}
        stack.extend(handler.get("fallback") or [])
        stack.extend(handler.get("compensate") or [])
    return count


def step_history(record: ExecutionRecord, checkpoints: list[StepCheckpoint]) -> dict[str, Any]:
    """``{execution_id, status, current_step, steps: [attempt...]}``; one entry per step attempt.

    Each attempt: ``step_key, step_id, step_type, attempt, status, started_at, ended_at,
    duration_ms, outputs, error, idempotency_key`` in checkpoint order (by end time).
    """
    attempts = []
    for cp in checkpoints:
        item = cp.to_dict()
        item.pop("execution_id", None)
        attempts.append(item)
    return {
        "execution_id": record.execution_id,
        "status": record.status,
        "current_step": record.current_step,
        "steps": attempts,
    }
