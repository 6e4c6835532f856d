"""The HTTP API of the CORTX Workflow Service (FDD §3), as a FastAPI app.

:func:`create_app` builds it; :mod:`serve_app.deployment` serves it on Ray Serve, and
``cortx-workflow serve`` runs that. Endpoints (scope needed when keys are configured)::

    POST /v1/workflows/execute                          execute  202 {execution_id, status, started_at}  §3.1
    GET  /v1/workflows/executions?filters&cursor        read     200 {items: [status record], next_cursor}
    GET  /v1/workflows/executions/{id}                  read     200 status record                        §3.2
    POST /v1/workflows/executions/{id}/cancel           execute  200 {execution_id, status: cancelled,…}  §3.3
    GET  /v1/workflows/executions/{id}/steps            read     200 {execution_id, status, steps: [...]}
    GET  /v1/workflows/executions/{id}/events           read     200 {execution_id, status, source, done, events}
    GET  /v1/workflows/executions/{id}/events/stream    read     200 text/event-stream until the run ends
    GET  /v1/workflows/queue                            read     200 {max_concurrent_executions, running, queued}
    POST /v1/packs                                      deploy   201 new / 200 identical {id, version, …}
    GET  /v1/packs                                      read     200 {packs: [summary...]}
    GET  /v1/packs/{id}/versions                        read     200 {id, latest, versions: [...]}
    GET  /v1/packs/{id}/versions/{version}              read     200 summary + document + source
    POST /v1/packs/{id}/versions/{version}/deprecate    deploy   200 summary (deprecated: true)
    GET  /healthz                                       none     200 {"status": "ok"}
    GET  /readyz                                        any key  200 / 503 {status, checks}
    GET  /openapi.json                                  any key  the OpenAPI document

Errors are RFC 9457 problems (:mod:`serve_app.problems`); docs/api.md has examples of
every request, answer and error. The OpenAPI document models every request and answer
(:func:`serve_app.schemas.documented`); ``tests/e2e/test_api_fuzz.py`` fuzzes the API from it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from actors.registry import ServiceRegistry
from actors.settings import Settings
from dsl.errors import ConfigurationError
from dsl.task_spec import TaskPolicy
from persistence.packs import deploy_pack, latest_version, plausible_pack_key, sort_versions
from serve_app.auth import ApiKeyring, ApiSettings, Principal
from serve_app.backend import Backend
from serve_app.errors import IdempotencyKeyInvalidError, PackNotFoundError, UnsupportedMediaTypeError
from serve_app.events import KEEPALIVE_S, EventStreamResponse, StreamSlots, event_stream
from serve_app.listing import pack_id_filter, utc_bound
from serve_app.problems import BodyLimitMiddleware, SafeJSONResponse, problem, register_problem_handler
from serve_app.schemas import (
    JSON_TYPES,
    YAML_TYPES,
    AcceptedExecution,
    ExecuteRequest,
    ExecutionEvents,
    ExecutionPage,
    ExecutionStatusName,
    ExecutionStatusRecord,
    Health,
    PackDeployed,
    PackDetail,
    PackList,
    QueueDepth,
    PackSummary,
    PackVersions,
    Problem,
    Readiness,
    StepHistory,
    accepted_body,
    documented,
    media_type,
    pack_detail,
    pack_summary,
    parse_model,
    read_json,
    read_text,
    step_history,
)

__all__ = ["create_app"]

_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
_EXECUTE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExecuteRequest"}}},
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Makes retries safe: the same key (per API key) answers the same execution.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
        }
    ],
}
#: Largest event sequence number accepted in ``after`` / ``Last-Event-ID`` (2**53: exact in JSON).
MAX_SEQ = 2**53
_SECURITY_SCHEME = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of CORTX_API_KEYS; scopes: execute, read, deploy, admin.",
    }
}
_PACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {kind: {"schema": {"type": "string" if kind != "application/json" else "object"}}
                    for kind in (*YAML_TYPES[:1], *JSON_TYPES)},
    }
}


def create_app(
    settings: Settings,
    registry: ServiceRegistry,
    *,
    api_keys: ApiKeyring | str | Mapping[str, Iterable[str]] | None = None,
    namespace: str = "cortx",
    api_settings: ApiSettings | None = None,
    event_keepalive_s: float = KEEPALIVE_S,
) -> FastAPI:
    """Build the FastAPI app.

    Args:
        settings: engine settings (``Settings.from_env()``); persistence must be enabled,
            since the API reads runs from the shared database.
        registry: the service registry packs are validated against and runs use.
        api_keys: bearer keys: a keyring, the ``CORTX_API_KEYS`` text, or ``{key: scopes}``;
            None or empty = development mode (no authentication). Overrides
            ``api_settings.keyring`` when given.
        namespace: Ray namespace of the ExecutionHosts (one per deployment).
        api_settings: body size and time limits, engine timeout, event stream cap
            (:class:`~serve_app.auth.ApiSettings`; defaults 1 MiB, 10 s, 30 s, 100).
        event_keepalive_s: longest silence on an event stream before a keep-alive comment
            (also the host long-poll timeout); keep it below the engine timeout.

    Raises:
        ConfigurationError: persistence is disabled, or ``api_keys`` is malformed.
    """
    if not settings.state_persistence_enabled:
        raise ConfigurationError(
            "STATE_PERSISTENCE_ENABLED", "false", "the HTTP API needs the shared database; set it to true"
        )
    limits = api_settings or ApiSettings()
    keyring = ApiKeyring.coerce(api_keys) if api_keys is not None else limits.keyring
    backend = Backend(settings, registry, namespace, limits.engine_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()

    app = FastAPI(
        title="CORTX Workflow Service",
        version="1.0.0",
        description="Durable WorkflowPack execution on Ray (FDD §3). Errors are RFC 9457 problems.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.backend = backend
    app.state.keyring = keyring
    register_problem_handler(app)
    # Keys configured: a request with a body is authenticated before its body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes,
                       authenticate=keyring.authenticate if keyring.enabled else None,
                       body_timeout_s=limits.body_timeout_s)
    streams = StreamSlots(limits.max_event_streams)

    def scope(needed: str | None) -> Callable[[Request], Awaitable[Principal]]:
        async def check(request: Request) -> Principal:  # async: no thread-pool hop per request
            principal = keyring.authenticate(request.headers.get("authorization"))
            keyring.authorize(principal, needed)
            _refuse_unknown_query(request)
            return principal

        return check

    # --- executions (FDD §3) ----------------------------------------------------------------

    @app.post(
        "/v1/workflows/execute", status_code=202, tags=["executions"], openapi_extra=_EXECUTE_BODY, response_model=None,
        responses=documented(AcceptedExecution, 400, 401, 403, 404, 408, 413, 415, 422, 503, status=202,
                             description="Accepted (or an idempotent replay)",
                             headers={"Location": "the execution's URL",
                                      "Idempotent-Replayed": "true when this answers an earlier request"}),
    )
    async def execute(request: Request, response: Response, who: Principal = Depends(scope("execute"))) -> dict[str, Any]:
        """Start a run of a deployed pack (§3.1); 202 without waiting. ``Idempotency-Key`` makes retries safe."""
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise IdempotencyKeyInvalidError()
        body = parse_model(ExecuteRequest, await read_json(request))
        record, replayed = await backend.execute(body, who.name, key)
        response.headers["Location"] = f"/v1/workflows/executions/{record['execution_id']}"
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return accepted_body(record)

    @app.get("/v1/workflows/executions", tags=["executions"], response_model=None,
             responses=documented(ExecutionPage, 401, 403, 422, 503))
    async def list_executions(
        workflow_pack_id: str | None = Query(None, min_length=1, max_length=200, description="Only this pack's runs."),
        status: list[ExecutionStatusName] | None = Query(None, description="Only these statuses (repeat the parameter)."),
        created_after: datetime | None = Query(None, description="Created at or after (ISO 8601; no offset = UTC)."),
        created_before: datetime | None = Query(None, description="Created before (exclusive)."),
        limit: int = Query(50, ge=1, le=200, description="Page size."),
        cursor: str | None = Query(None, min_length=1, max_length=512, description="next_cursor of the previous page."),
        _: Principal = Depends(scope("read")),
    ) -> dict[str, Any]:
        """Runs, newest first, filtered by pack, status and creation time; keyset pagination by ``cursor``."""
        return await backend.list_page(
            workflow_pack_id=pack_id_filter(workflow_pack_id),
            statuses=list(dict.fromkeys(s.value for s in status)) if status else None,
            created_after=utc_bound("created_after", created_after),
            created_before=utc_bound("created_before", created_before),
            cursor=cursor,
            limit=limit,
        )

    @app.get("/v1/workflows/executions/{execution_id}", tags=["executions"], response_model=None,
             responses=documented(ExecutionStatusRecord, 401, 403, 404, 503))
    async def execution_status(execution_id: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """The run's status record (§3.2): status, current_step, completed_steps, outputs, duration_ms, error."""
        return await backend.status(execution_id)

    @app.post("/v1/workflows/executions/{execution_id}/cancel", tags=["executions"], response_model=None,
              responses=documented(ExecutionStatusRecord, 401, 403, 404, 409, 503,
                                   description="The run's record once it stopped (status cancelled)"))
    async def cancel(execution_id: str, _: Principal = Depends(scope("execute"))) -> dict[str, Any]:
        """Cancel a run (§3.3); answers once it stopped. 409 if it already completed or failed."""
        return await backend.cancel(execution_id)

    @app.get("/v1/workflows/executions/{execution_id}/steps", tags=["executions"], response_model=None,
             responses=documented(StepHistory, 401, 403, 404, 503))
    async def steps(execution_id: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """The step history: one entry per step attempt, with status, timings, outputs and error."""
        record, checkpoints = await backend.record_and_checkpoints(execution_id)
        return step_history(record, checkpoints)

    @app.get("/v1/workflows/executions/{execution_id}/events", tags=["executions"], response_model=None,
             responses=documented(ExecutionEvents, 401, 403, 404, 422, 503))
    async def events(
        execution_id: str,
        after: int = Query(0, ge=0, le=MAX_SEQ, description="Only events with a larger seq."),
        _: Principal = Depends(scope("read")),
    ) -> dict[str, Any]:
        """The run's events: live from its host while it holds them, else rebuilt from the checkpoints."""
        return await backend.execution_events(execution_id, after)

    @app.get(
        "/v1/workflows/executions/{execution_id}/events/stream", tags=["executions"], response_model=None,
        responses=documented(None, 401, 403, 404, 422, 503, media="text/event-stream",
                             description="Server-Sent Events (id: seq, event: type, data: JSON); ends after the "
                                         "run's final execution event"),
    )
    async def events_stream(
        execution_id: str,
        after: int = Query(0, ge=0, le=MAX_SEQ, description="Start after this seq (Last-Event-ID wins)."),
        last_event_id: int | None = Header(None, alias="Last-Event-ID", ge=0, le=MAX_SEQ,
                                           description="The id of the last event received (resume)."),
        _: Principal = Depends(scope("read")),
    ) -> EventStreamResponse:
        """The run's events as a live SSE stream that ends when the run ends; resumes from ``Last-Event-ID``."""
        record = await backend.record(execution_id)
        start = last_event_id if last_event_id is not None else after
        return EventStreamResponse(
            event_stream(backend, record, start, keepalive_s=event_keepalive_s),
            streams.take(),
        )

    # --- packs (Designer) -------------------------------------------------------------------

    @app.get("/v1/workflows/queue", tags=["executions"], response_model=None,
             responses=documented(QueueDepth, 401, 403, 503))
    async def queue(_: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """Admission control (FDD §9.2): the limit on running runs, and how many run and wait."""
        return await backend.queue_depth()

    @app.post("/v1/packs", status_code=201, tags=["packs"], openapi_extra=_PACK_BODY, response_model=None,
              responses=documented(PackDeployed, 400, 401, 403, 408, 409, 413, 415, 422, 503, status=201,
                                   description="Deployed (200: the same document was deployed already)",
                                   headers={"Location": "the version's URL"}, also=(200,)))
    async def deploy(request: Request, response: Response, _: Principal = Depends(scope("deploy"))) -> dict[str, Any]:
        """Deploy a pack version (YAML or JSON); 201 new, 200 identical redeploy, 409 different body."""
        kind = media_type(request)
        if kind in YAML_TYPES:
            fmt = "yaml"
        elif kind in JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json")):
            fmt = "json"
        else:
            raise UnsupportedMediaTypeError(kind, (*YAML_TYPES[:1], *JSON_TYPES))
        store = await backend.store()
        # Registered task names are checked when a run starts; modules against the allowlist now.
        deployed = await deploy_pack(
            store, await read_text(request), fmt, backend.registry.names(), TaskPolicy(backend.settings.task_modules)
        )
        record = deployed.record
        if not deployed.created:
            response.status_code = 200
        response.headers["Location"] = f"/v1/packs/{record.pack_id}/versions/{record.version}"
        return deployed.summary()

    @app.get("/v1/packs", tags=["packs"], response_model=None, responses=documented(PackList, 401, 403, 503))
    async def list_packs(_: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """Every deployed pack version (summaries), by id, versions lowest first."""
        records = await (await backend.store()).list_packs()
        by_id: dict[str, list[Any]] = {}
        for record in records:
            by_id.setdefault(record.pack_id, []).append(record)
        return {"packs": [pack_summary(r) for pid in sorted(by_id) for r in sort_versions(by_id[pid])]}

    @app.get("/v1/packs/{pack_id}/versions", tags=["packs"], response_model=None,
             responses=documented(PackVersions, 401, 403, 404, 503))
    async def pack_versions(pack_id: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """Versions of one pack, lowest first, and ``latest`` (what an execute without version runs)."""
        records = await (await backend.store()).list_pack_versions(pack_id) if plausible_pack_key(pack_id) else []
        if not records:
            raise PackNotFoundError(pack_id)
        latest = latest_version(records)
        return {
            "id": pack_id,
            "latest": latest.version if latest else None,
            "versions": [pack_summary(r) for r in sort_versions(records)],
        }

    @app.get("/v1/packs/{pack_id}/versions/{version}", tags=["packs"], response_model=None,
             responses=documented(PackDetail, 401, 403, 404, 503))
    async def get_pack(pack_id: str, version: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """One pack version with its validated ``document`` and its ``source`` text."""
        record = await (await backend.store()).get_pack(pack_id, version) if plausible_pack_key(pack_id, version) else None
        if record is None:
            raise PackNotFoundError(pack_id, version)
        return pack_detail(record)

    @app.post("/v1/packs/{pack_id}/versions/{version}/deprecate", tags=["packs"], response_model=None,
              responses=documented(PackSummary, 401, 403, 404, 503))
    async def deprecate(pack_id: str, version: str, _: Principal = Depends(scope("deploy"))) -> dict[str, Any]:
        """Deprecate a version: executes without a version skip it; pinned executes still run it."""
        store = await backend.store()
        record = await store.deprecate_pack(pack_id, version) if plausible_pack_key(pack_id, version) else None
        if record is None:
            raise PackNotFoundError(pack_id, version)
        return pack_summary(record)

    # --- operations -------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], response_model=None, responses=documented(Health),
             openapi_extra={"security": []})
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. No authentication."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], response_model=None, responses=documented(Readiness, 401, 503))
    async def readyz(request: Request, _: Principal = Depends(scope(None))) -> dict[str, Any] | JSONResponse:
        """Readiness: the database and Ray are reachable. 503 problem ``not_ready`` otherwise."""
        checks = await backend.readiness()
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "checks": checks}
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        return problem(503, "not_ready", f"not ready: {failing}", instance=request.url.path,
                       title="Service not ready", checks=checks)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: Principal = Depends(scope(None))) -> JSONResponse:
        """The OpenAPI document (needs any valid key when keys are configured)."""
        return JSONResponse(_openapi(app))

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the hand-parsed request body's and the problems' schemas added.

    Every operation but ``/healthz`` needs the bearer key (``security``).
    """
    if app.openapi_schema is None:
        document = app.openapi()
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (ExecuteRequest, Problem):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        components["securitySchemes"] = _SECURITY_SCHEME
        document["security"] = [{"bearerAuth": []}]
        for operation in (op for item in document["paths"].values() for op in item.values() if isinstance(op, dict)):
            for parameter in operation.get("parameters", []):
                _not_null(parameter)
    return app.openapi_schema or app.openapi()


def _refuse_unknown_query(request: Request) -> None:
    """422 ``request_invalid`` naming every query parameter the operation does not declare.

    A misspelt filter (``?stauts=failed``) must not silently list everything.
    """
    if not request.query_params:
        return
    dependant = getattr(request.scope.get("route"), "dependant", None)
    known = {field.alias for field in getattr(dependant, "query_params", ())}
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": "unknown query parameter", "type": "extra_forbidden"} for name in unknown]
        )


def _not_null(parameter: dict[str, Any]) -> None:
    """An optional parameter is omitted, never null: drop FastAPI's ``anyOf [..., null]``."""
    schema = parameter.get("schema") or {}
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            parameter["schema"] = {**kept[0], **schema}
