"""Errors only the HTTP API raises; each carries its HTTP status and a stable ``code``.

They extend the service's one exception tree (:class:`dsl.errors.WorkflowError`), so the
API's single problem handler (:mod:`serve_app.problems`) maps them with the rest::

    WorkflowError
    └── ApiError                        status, code, title, optional errors/headers/extra
        ├── BadRequestError             400 body_malformed          body is not JSON / not UTF-8
        ├── IdempotencyKeyInvalidError  400 idempotency_key_invalid header malformed
        ├── AuthenticationError         401 unauthorized            no / unknown bearer key
        ├── ForbiddenError              403 forbidden               key lacks the scope
        ├── ExecutionFinishedError      409 execution_finished      cancel of a completed/failed run
        ├── BodyTimeoutError            408 body_timeout            body not all in within the time
        ├── PayloadTooLargeError        413 payload_too_large       body over the limit
        ├── UnsupportedMediaTypeError   415 unsupported_media_type  wrong Content-Type
        ├── IdempotencyKeyReusedError   422 idempotency_key_reused  same key, different request
        ├── EngineUnavailableError      503 engine_unavailable      Ray or a host did not answer
        └── EventStreamsExhaustedError  503 event_streams_exhausted the replica's event streams are all open

Like every WorkflowError they keep their constructor arguments in ``args`` (so they pickle).

``PackNotFoundError`` (404 ``pack_not_found``) and ``UnstorableValueError`` (422
``value_unstorable``) are raised below the API too (the pack store, the Python driver),
so they live in :mod:`dsl.errors`; they are re-exported here for the API's code.
"""

from __future__ import annotations

from typing import Any

from dsl.errors import PackNotFoundError, UnstorableValueError, WorkflowError

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "BodyTimeoutError",
    "EngineUnavailableError",
    "EventStreamsExhaustedError",
    "ExecutionFinishedError",
    "ForbiddenError",
    "IdempotencyKeyInvalidError",
    "IdempotencyKeyReusedError",
    "PackNotFoundError",
    "PayloadTooLargeError",
    "UnstorableValueError",
    "UnsupportedMediaTypeError",
]

_REALM = 'Bearer realm="cortx-workflow"'


class ApiError(WorkflowError):
    """Base of the API's own errors: an HTTP ``status`` plus problem details."""

    code = "api_error"
    status = 400
    title = "Bad request"

    @property
    def errors(self) -> list[dict[str, Any]] | None:
        """Problem ``errors`` members, for errors that list several problems."""
        return None

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. ``WWW-Authenticate``)."""
        return {}

    @property
    def extra(self) -> dict[str, Any]:
        """Extension members added to the problem object."""
        return {}


class BadRequestError(ApiError):
    """The body cannot be read: not UTF-8, not JSON, NaN, nested too deeply.

    Args:
        reason: one sentence.
        line: 1-based line of a JSON syntax error, when known.
        column: 1-based column, when known.
    """

    code = "body_malformed"
    status = 400
    title = "Malformed request body"

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(reason, line, column)
        self.reason, self.line, self.column = reason, line, column

    def message(self) -> str:
        return self.reason

    @property
    def errors(self) -> list[dict[str, Any]]:
        error: dict[str, Any] = {"pointer": "", "message": self.reason, "code": "json_invalid"}
        if self.line is not None:
            error.update(line=self.line, column=self.column or 1)
        return [error]


class IdempotencyKeyInvalidError(ApiError):
    """The ``Idempotency-Key`` header is empty, too long or not printable ASCII."""

    code = "idempotency_key_invalid"
    status = 400
    title = "Invalid Idempotency-Key header"

    def message(self) -> str:
        return "Idempotency-Key must be 1 to 255 printable ASCII characters"


class AuthenticationError(ApiError):
    """No bearer key, or one that is not configured (both answer the same, on purpose).

    Args:
        reason: ``missing`` or ``invalid``.
    """

    code = "unauthorized"
    status = 401
    title = "Authentication required"

    def __init__(self, reason: str = "missing") -> None:
        super().__init__(reason)
        self.reason = reason

    def message(self) -> str:
        if self.reason == "missing":
            return "send an API key as 'Authorization: Bearer <key>'"
        return "the API key is not valid"

    @property
    def headers(self) -> dict[str, str]:
        if self.reason == "missing":
            return {"WWW-Authenticate": _REALM}
        return {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'}


class ForbiddenError(ApiError):
    """The key is valid but lacks the scope the endpoint needs.

    Args:
        scope: the scope needed (``execute``, ``read``, ``deploy`` or ``admin``).
    """

    code = "forbidden"
    status = 403
    title = "Insufficient scope"

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope

    def message(self) -> str:
        return f"this API key lacks the {self.scope!r} scope"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{self.scope}"'}

    @property
    def extra(self) -> dict[str, Any]:
        return {"required_scope": self.scope}


class ExecutionFinishedError(ApiError):
    """A cancel request for a run that already ended ``completed`` or ``failed``.

    Args:
        execution_id: the run.
        status: its (unchanged) terminal status.
    """

    code = "execution_finished"
    status = 409
    title = "Execution already finished"

    def __init__(self, execution_id: str, status: str) -> None:
        super().__init__(execution_id, status)
        self.execution_id, self.execution_status = execution_id, status

    def message(self) -> str:
        return f"execution {self.execution_id} already ended with status {self.execution_status!r}; nothing was changed"

    @property
    def extra(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "execution_status": self.execution_status}


class PayloadTooLargeError(ApiError):
    """The request body is larger than the configured limit.

    Args:
        size: bytes seen (or declared by ``Content-Length``).
        limit: the limit in bytes.
    """

    code = "payload_too_large"
    status = 413
    title = "Request body too large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size, limit)
        self.size, self.limit = size, limit

    def message(self) -> str:
        return f"the request body is over {self.limit} bytes ({self.size} bytes seen)"


class BodyTimeoutError(ApiError):
    """The request body did not all arrive within the configured time.

    A request whose body trickles in would otherwise hold one of the replica's request
    slots for as long as the client likes (docs/api.md, "Open requests per replica").

    Args:
        received: bytes of the body that had arrived.
        timeout_s: the limit, in seconds (``CORTX_API_BODY_TIMEOUT_SECONDS``).
    """

    code = "body_timeout"
    status = 408
    title = "Request body too slow"

    def __init__(self, received: int, timeout_s: float) -> None:
        super().__init__(received, timeout_s)
        self.received, self.timeout_s = received, timeout_s

    def message(self) -> str:
        return f"the request body did not arrive within {self.timeout_s:g} s ({self.received} bytes received)"

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body may still be on its way


class UnsupportedMediaTypeError(ApiError):
    """The ``Content-Type`` is not one the endpoint reads.

    Args:
        given: the Content-Type sent ("" when none).
        accepted: the media types accepted.
    """

    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"

    def __init__(self, given: str, accepted: tuple[str, ...]) -> None:
        super().__init__(given, accepted)
        self.given, self.accepted = given, tuple(accepted)

    def message(self) -> str:
        return f"Content-Type {self.given or '(none)'!r} is not accepted here; use {' or '.join(self.accepted)}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept-Post": ", ".join(self.accepted)}


class IdempotencyKeyReusedError(ApiError):
    """An ``Idempotency-Key`` already used for a different request (IETF idempotency draft: 422).

    Args:
        execution_id: the run the key belongs to.
    """

    code = "idempotency_key_reused"
    status = 422
    title = "Idempotency-Key reused with a different request"

    def __init__(self, execution_id: str) -> None:
        super().__init__(execution_id)
        self.execution_id = execution_id

    def message(self) -> str:
        return (
            f"this Idempotency-Key already started execution {self.execution_id} with a different "
            "pack, version, inputs or options; use a new key for a new request"
        )

    @property
    def extra(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id}


class EngineUnavailableError(ApiError):
    """Ray, or the ExecutionHost of a run, did not answer in time or is gone.

    Args:
        reason: what failed, one sentence (no secrets).
    """

    code = "engine_unavailable"
    status = 503
    title = "Workflow engine unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def message(self) -> str:
        return self.reason

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class EventStreamsExhaustedError(ApiError):
    """Every event stream this replica allows is open (``CORTX_API_MAX_EVENT_STREAMS``).

    An event stream holds one of the replica's request slots until its run ends; the cap,
    below Serve's ``max_ongoing_requests``, keeps slots free for every other request.

    Args:
        limit: the replica's cap on open event streams.
    """

    code = "event_streams_exhausted"
    status = 503
    title = "Too many open event streams"

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def message(self) -> str:
        return (
            f"this replica already serves its {self.limit} event streams; try again later, "
            "or poll GET .../events?after=<seq>"
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}
