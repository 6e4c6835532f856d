"""The HTTP API of the CORTX Workflow Service (FDD §3), as a FastAPI app.

:func:`create_app` builds it; :mod:`serve_app.deployment` serves it on Ray Serve, and
``cortx-workflow serve`` runs that. Endpoints (scope needed when keys are configured)::

    POST /v1/workflows/execute                          execute  202 {execution_id, status, started_at}  §3.1
    GET  /v1/workflows/executions/{id}                  read     200 status record                        §3.2
    POST /v1/workflows/executions/{id}/cancel           execute  200 {execution_id, status: cancelled,…}  §3.3
    GET  /v1/workflows/executions/{id}/steps            read     200 {execution_id, status, steps: [...]}
    POST /v1/packs                                      deploy   201 new / 200 identical {id, version, …}
    GET  /v1/packs                                      read     200 {packs: [summary...]}
    GET  /v1/packs/{id}/versions                        read     200 {id, latest, versions: [...]}
    GET  /v1/packs/{id}/versions/{version}              read     200 summary + document + source
    POST /v1/packs/{id}/versions/{version}/deprecate    deploy   200 summary (deprecated: true)
    GET  /healthz                                       none     200 {"status": "ok"}
    GET  /readyz                                        any key  200 / 503 {status, checks}
    GET  /openapi.json                                  any key  the OpenAPI document

Errors are RFC 9457 problems (:mod:`serve_app.problems`); docs/api.md has examples of
every request, answer and error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from actors.registry import ServiceRegistry
from actors.settings import Settings
from dsl.errors import ConfigurationError
from serve_app.auth import ApiKeyring, ApiSettings, Principal
from serve_app.backend import Backend
from serve_app.errors import IdempotencyKeyInvalidError, PackNotFoundError, UnsupportedMediaTypeError
from serve_app.packs import deploy_pack, latest_version, plausible_pack_key, sort_versions
from serve_app.problems import BodyLimitMiddleware, SafeJSONResponse, problem, register_problem_handler
from serve_app.schemas import (
    JSON_TYPES,
    YAML_TYPES,
    ExecuteRequest,
    accepted_body,
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
        api_settings: body limit and engine timeout (defaults: 1 MiB, 30 s).

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
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)

    def scope(needed: str | None) -> Callable[[Request], Principal]:
        def check(request: Request) -> Principal:
            principal = keyring.authenticate(request.headers.get("authorization"))
            keyring.authorize(principal, needed)
            return principal

        return check

    # --- executions (FDD §3) ----------------------------------------------------------------

    @app.post("/v1/workflows/execute", status_code=202, tags=["executions"], openapi_extra=_EXECUTE_BODY)
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

    @app.get("/v1/workflows/executions/{execution_id}", tags=["executions"])
    async def execution_status(execution_id: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """The run's status record (§3.2): status, current_step, completed_steps, outputs, duration_ms, error."""
        return await backend.status(execution_id)

    @app.post("/v1/workflows/executions/{execution_id}/cancel", tags=["executions"])
    async def cancel(execution_id: str, _: Principal = Depends(scope("execute"))) -> dict[str, Any]:
        """Cancel a run (§3.3); answers once it stopped. 409 if it already completed or failed."""
        return await backend.cancel(execution_id)

    @app.get("/v1/workflows/executions/{execution_id}/steps", tags=["executions"])
    async def steps(execution_id: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """The step history: one entry per step attempt, with status, timings, outputs and error."""
        record, checkpoints = await backend.record_and_checkpoints(execution_id)
        return step_history(record, checkpoints)

    # --- packs (Designer) -------------------------------------------------------------------

    @app.post("/v1/packs", status_code=201, tags=["packs"], openapi_extra=_PACK_BODY)
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
        deployed = await deploy_pack(store, await read_text(request), fmt, backend.registry.names())
        record = deployed.record
        if not deployed.created:
            response.status_code = 200
        response.headers["Location"] = f"/v1/packs/{record.pack_id}/versions/{record.version}"
        return {**pack_summary(record), "created": deployed.created, "warnings": list(deployed.warnings)}

    @app.get("/v1/packs", tags=["packs"])
    async def list_packs(_: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """Every deployed pack version (summaries), by id, versions lowest first."""
        records = await (await backend.store()).list_packs()
        by_id: dict[str, list[Any]] = {}
        for record in records:
            by_id.setdefault(record.pack_id, []).append(record)
        return {"packs": [pack_summary(r) for pid in sorted(by_id) for r in sort_versions(by_id[pid])]}

    @app.get("/v1/packs/{pack_id}/versions", tags=["packs"])
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

    @app.get("/v1/packs/{pack_id}/versions/{version}", tags=["packs"])
    async def get_pack(pack_id: str, version: str, _: Principal = Depends(scope("read"))) -> dict[str, Any]:
        """One pack version with its validated ``document`` and its ``source`` text."""
        record = await (await backend.store()).get_pack(pack_id, version) if plausible_pack_key(pack_id, version) else None
        if record is None:
            raise PackNotFoundError(pack_id, version)
        return pack_detail(record)

    @app.post("/v1/packs/{pack_id}/versions/{version}/deprecate", tags=["packs"])
    async def deprecate(pack_id: str, version: str, _: Principal = Depends(scope("deploy"))) -> dict[str, Any]:
        """Deprecate a version: executes without a version skip it; pinned executes still run it."""
        store = await backend.store()
        record = await store.deprecate_pack(pack_id, version) if plausible_pack_key(pack_id, version) else None
        if record is None:
            raise PackNotFoundError(pack_id, version)
        return pack_summary(record)

    # --- operations -------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. No authentication."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], response_model=None)
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
    """The app's OpenAPI document, with the hand-parsed request bodies' schemas added."""
    if app.openapi_schema is None:
        document = app.openapi()
        schema = ExecuteRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["ExecuteRequest"] = schema
    return app.openapi_schema or app.openapi()
