"""RFC 9457 problem details: the HTTP API's errors, the one exception handler, the body limit.

Every error answer of the API is ``application/problem+json``::

    {
      "type": "https://cortx.dev/problems/pack_invalid",   # stable: PROBLEM_BASE + code
      "title": "Invalid WorkflowPack",                      # fixed per code
      "status": 422,
      "detail": "2 problem(s) in pack <request>: ...",      # this occurrence
      "instance": "/v1/packs",                              # the request path
      "code": "pack_invalid",                               # extension: the stable code
      "errors": [{"pointer": "/steps/0/service", "message": "...", "code": "unknown_service",
                  "line": 12, "column": 5}]                 # validation problems only
    }

:func:`problem_response` is the single mapping from exceptions to answers (registered for
:class:`~dsl.errors.WorkflowError`, FastAPI's ``RequestValidationError``, Starlette's
``HTTPException`` and ``Exception``). Statuses (docs/api.md lists them all):

=====================================  ======  ====================================
exception                              status  code
=====================================  ======  ====================================
PackValidationError                    422     pack_invalid
InputValidationError                   422     inputs_invalid (pointers under /inputs)
PackLoadError                          400     pack_unreadable
ExpressionError (any)                  422     its own code
ConfigurationError                     503     configuration_invalid (detail hidden)
ExecutionNotFoundError                 404     execution_not_found
PackNotFoundError                      404     pack_not_found
PackConflictError / FencedError        409     pack_conflict / owner_fenced
UnstorableValueError                   422     value_unstorable (pointer in errors)
ApiError subclasses (serve_app.errors) theirs  theirs
RequestValidationError                 422     request_invalid (400 body_malformed)
DBAPIError / OSError                   503     database_unavailable (detail hidden, logged)
HTTPException                          its     not_found, method_not_allowed, http_<n>
anything else                          500     internal_error (detail hidden, logged)
=====================================  ======  ====================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsl.errors import (
    ConfigurationError,
    ExecutionNotFoundError,
    ExpressionError,
    FencedError,
    InputValidationError,
    PackConflictError,
    PackLoadError,
    PackNotFoundError,
    PackValidationError,
    UnstorableValueError,
    ValidationIssue,
    WorkflowError,
)
from serve_app.errors import ApiError, BodyTimeoutError, EngineUnavailableError, PayloadTooLargeError

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "BodyLimitMiddleware",
    "SafeJSONResponse",
    "problem",
    "problem_response",
    "register_problem_handler",
]

log = logging.getLogger("cortx.api")

#: Prefix of every problem ``type`` URI; the code follows.
PROBLEM_BASE = "https://cortx.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

_TITLES: dict[str, str] = {
    "pack_invalid": "Invalid WorkflowPack",
    "pack_unreadable": "Unreadable WorkflowPack",
    "inputs_invalid": "Invalid run inputs",
    "configuration_invalid": "Service unavailable",
    "execution_not_found": "Execution not found",
    "pack_conflict": "Pack version already exists with a different body",
    "pack_not_found": "Pack not found",
    "value_unstorable": "Value cannot be stored",
    "owner_fenced": "Execution owned by another worker",
    "request_invalid": "Invalid request",
    "body_malformed": "Malformed request body",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "internal_error": "Internal error",
}

# (exception class, status), most specific first.
_STATUS: tuple[tuple[type[WorkflowError], int], ...] = (
    (PackValidationError, 422),
    (InputValidationError, 422),
    (PackLoadError, 400),
    (ExpressionError, 422),
    (ConfigurationError, 503),
    (ExecutionNotFoundError, 404),
    (PackNotFoundError, 404),
    (PackConflictError, 409),
    (FencedError, 409),
)


class SafeJSONResponse(JSONResponse):
    """JSON answer that cannot fail on text: a lone surrogate (echoed from a refused request)
    is written as its ``\\uXXXX`` escape instead of raising while encoding UTF-8."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build one ``application/problem+json`` answer (the only way the API answers errors)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title or _TITLES.get(code) or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body["code"] = code
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return SafeJSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def issue_dicts(issues: Iterable[ValidationIssue], prefix: str = "") -> list[dict[str, Any]]:
    """``errors`` members of a problem: ``{pointer, message, code, line?, column?}`` per issue."""
    out = []
    for issue in issues:
        item: dict[str, Any] = {"pointer": prefix + issue.pointer, "message": issue.message, "code": issue.code}
        if issue.line is not None:
            item["line"] = issue.line
            item["column"] = issue.column or 1
        if issue.severity != "error":
            item["severity"] = issue.severity
        out.append(item)
    return out


def _pointer(loc: Iterable[Any]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def _request_errors(exc: RequestValidationError) -> tuple[int, str, list[dict[str, Any]]]:
    """Map FastAPI/pydantic errors to problem ``errors``; a body that is not JSON is a 400."""
    errors: list[dict[str, Any]] = []
    malformed = False
    for err in exc.errors():
        loc = list(err.get("loc") or ())
        kind = str(err.get("type", "invalid"))
        where = loc[0] if loc else "body"
        item: dict[str, Any] = {"pointer": _pointer(loc[1:]) if where == "body" else "", "message": str(err.get("msg")),
                                "code": kind}
        if where != "body":
            item["parameter"] = f"{where}.{'.'.join(map(str, loc[1:]))}"
        if kind == "json_invalid":
            malformed = True
        errors.append(item)
    if malformed:
        return 400, "body_malformed", errors
    return 422, "request_invalid", errors


def problem_response(request: Request, exc: BaseException) -> JSONResponse:
    """The one mapping from an exception to a problem answer (see the module docstring)."""
    instance = request.url.path
    if isinstance(exc, ApiError):
        return problem(
            exc.status, exc.code, exc.message(), instance=instance, title=exc.title,
            errors=exc.errors, headers=exc.headers or None, **exc.extra,
        )
    if isinstance(exc, PackValidationError):
        return problem(422, exc.code, exc.message(), instance=instance, errors=issue_dicts(exc.issues))
    if isinstance(exc, InputValidationError):
        return problem(422, exc.code, exc.message(), instance=instance, errors=issue_dicts(exc.issues, "/inputs"))
    if isinstance(exc, PackLoadError):
        error: dict[str, Any] = {"pointer": "", "message": exc.reason, "code": exc.code}
        if exc.line is not None:
            error.update(line=exc.line, column=exc.column or 1)
        return problem(400, exc.code, exc.message(), instance=instance, errors=[error])
    if isinstance(exc, UnstorableValueError):
        return problem(422, exc.code, exc.message(), instance=instance,
                       errors=[{"pointer": exc.pointer, "message": exc.message(), "code": exc.code}])
    if isinstance(exc, ConfigurationError):
        # The message may name hosts or paths of the deployment: log it, do not answer it.
        log.error("configuration problem answering %s: %s", instance, exc)
        return problem(503, exc.code, "the service cannot reach a dependency or is misconfigured; see its log",
                       instance=instance)
    if isinstance(exc, WorkflowError):
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 400)
        return problem(status, exc.code, exc.message(), instance=instance)
    if isinstance(exc, RequestValidationError):
        status, code, errors = _request_errors(exc)
        return problem(status, code, "the request does not match the API", instance=instance, errors=errors)
    if isinstance(exc, (DBAPIError, OSError)):
        # The database went away after the store was opened (or a driver-level failure).
        log.error("database error answering %s %s: %s", request.method, instance, type(exc).__name__)
        return problem(503, "database_unavailable", "the database did not answer; try again", instance=instance,
                       title="Database unavailable", headers={"Retry-After": "1"})
    if _is_ray_actor_error(exc):
        # A Ray actor died under the request: a host between its lookup and the call, or
        # Serve's own proxy when the service stops with a request (an event stream) open.
        log.warning("a Ray actor died answering %s %s: %s", request.method, instance, type(exc).__name__)
        return problem_response(request, EngineUnavailableError("a part of the workflow engine went away; try again"))
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return problem(exc.status_code, code, str(exc.detail), instance=instance, headers=dict(exc.headers or {}) or None)
    log.error("internal error answering %s %s", request.method, instance, exc_info=exc)
    return problem(500, "internal_error", "an unexpected error occurred; it has been logged", instance=instance)


def _is_ray_actor_error(exc: BaseException) -> bool:
    """True for Ray's ``RayActorError`` family (``ActorDiedError``, ``ActorUnavailableError``...).

    Ray is imported here, not with the module: only an unexpected error needs it."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


def register_problem_handler(app: Any) -> None:
    """Install :func:`problem_response` for every exception family the API can meet."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, exc)

    for family in (WorkflowError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(family, handler)


# --------------------------------------------------------------------------- body limit

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: How much of an over-long body is read and dropped before answering 413, so the client
#: (still sending) reads the answer instead of a reset connection.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse request bodies over ``max_bytes`` with a 413 problem.

    A ``Content-Length`` above the limit is refused before reading; a chunked body is
    counted as it arrives. Accepted bodies are buffered and replayed to the app (they are
    at most ``max_bytes``), so no handler can read past the limit.

    With ``authenticate`` (the keyring's, when API keys are configured), a request that
    announces a body is authenticated from its headers before the body is read: without a
    valid key it is answered 401 at once, so a client without a key cannot hold one of the
    replica's request slots by sending its body slowly. The endpoint still checks the
    key's scope.

    The whole body must arrive within ``body_timeout_s`` seconds of the middleware starting
    to read it, or the request is answered 408 ``body_timeout`` with ``Connection: close``:
    a body sent a byte at a time would otherwise hold a request slot for ever. Draining an
    over-long body before its 413 has the same bound.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        authenticate: Callable[[str | None], Any] | None = None,
        body_timeout_s: float = 10.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.authenticate = authenticate
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        announced = False  # the request says a body follows
        expects_continue = False  # `Expect: 100-continue`: the body is not sent until asked for
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                announced = announced or declared != 0
            elif name == b"transfer-encoding":
                announced = True
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"expect":
                expects_continue = value.lower() == b"100-continue"
        if announced and self.authenticate is not None:
            try:
                self.authenticate(authorization)
            except ApiError as exc:
                # The body was not read and may still be on its way: close after the answer.
                response = problem_response(Request(scope), exc)
                response.headers["Connection"] = "close"
                await response(scope, receive, send)
                return
        chunks: list[bytes] = []
        total = 0
        more = True
        if declared is not None and declared > self.max_bytes:
            # A client that asked `Expect: 100-continue` has not sent the body: answer now.
            # Reading it would make the server send `100 Continue` and then wait for it.
            await self._refuse(scope, receive, send, declared, more=not expects_continue)
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    total += len(body)
                    more = bool(message.get("more_body"))
                    if total > self.max_bytes:
                        break
                    chunks.append(body)
        except TimeoutError:
            await problem_response(Request(scope), BodyTimeoutError(total, self.body_timeout_s))(scope, receive, send)
            return
        if total > self.max_bytes:
            await self._refuse(scope, receive, send, total, more)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Receive, send: Send, size: int, more: bool = True) -> None:
        drained = 0
        # Drained for at most the body timeout: the answer goes with `Connection: close` anyway.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.body_timeout_s):
                while more and drained < DRAIN_LIMIT_BYTES:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    drained += len(message.get("body", b""))
                    more = bool(message.get("more_body"))
        exc = PayloadTooLargeError(size, self.max_bytes)
        response = problem(
            413, exc.code, exc.message(), instance=scope.get("path"), title=exc.title, headers={"Connection": "close"}
        )
        await response(scope, receive, send)
