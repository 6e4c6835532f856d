"""Deterministic stand-ins for the CORTX Validation, Compliance and Ledger services.

A small FastAPI app that workflows, tests and benchmarks call instead of the real
upstream services. Answers depend only on the request, so runs are reproducible;
latency and failures are injected on purpose; every business request is counted so a
test can assert exactly how many calls (and retries) a workflow made.

Endpoints (JSON in, JSON out):

==========================================  ==================================================
``POST /validation/v1/identity``            ``{"applicant": {...}}`` →
                                            ``{"check": "identity", "valid": bool}``
``POST /validation/v1/income``              ``{"applicant": {...}, "amount": n}`` →
                                            ``{"check": "income", "valid": bool, "ratio": x}``
``POST /validation/v1/item``                ``{"sku", "quantity", "unit_price"}`` →
                                            ``{"sku", "valid", "total"}``
``POST /compliance/v1/check``               ``{"amount": n, "country": "GB"}`` →
                                            ``{"approved": bool, "risk": "low"|"high"}``
``POST /compliance/v1/manager-review``      → ``{"approved": true, "reviewer": ...}``
``POST /ledger/v1/entries``                 any JSON → ``{"recorded": true, "entry_id": "le-…"}``
``POST /ledger/v1/audit``                   an audit record (JSON object) → ``{"recorded": true,
                                            "audit_id": "au-…", "duplicate": bool}``; deduplicated
                                            on ``Idempotency-Key`` (FDD §4.1 audit logging)
``GET /ledger/v1/audit``                    ``{"records": [...]}`` in arrival order, without
                                            duplicates; ``?execution_id=`` filters
``GET|POST|PUT /echo/{path}``               → ``{"method", "path", "body", "query"}``
``GET /_demo/calls``                        counters and the last 1000 calls (not counted)
``POST /_demo/reset``                       clears counters and fault progress
``GET|POST /_demo/faults``                  reads / replaces the injected faults
``GET /_demo/health``                       ``{"ok": true}``
==========================================  ==================================================

Every request outside ``/_demo/`` is counted before anything else happens (so a call
that hangs or fails on purpose is counted too), then the fixed ``latency_ms`` and any
fault's ``delay_ms`` are slept, then an injected failure answers or the endpoint does.
A body the endpoint cannot use answers 422 ``{"error": ..., "detail": ...}``, never 500.

Run it from a shell (loopback only; it is a test double)::

    python -m serve_app.demo_services --port 8700 --latency-ms 20 \\
        --fault /validation/v1/income=2:503 --fault /ledger/v1/entries=0:200:delay=500

or in-process from a test::

    with start_in_thread(faults=[Fault("/validation/v1/income", fail_first=2)]) as demo:
        httpx.post(demo.url + "/validation/v1/income", json={...})
        assert demo.calls()["by_path"]["POST /validation/v1/income"] == 1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import ipaddress
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr

from dsl.errors import ConfigurationError

__all__ = ["DemoServer", "Fault", "create_app", "main", "parse_fault", "serve", "start_in_thread"]

LOG_LIMIT = 1000
"""How many recent calls ``GET /_demo/calls`` returns in ``log``."""

HANG_SECONDS = 3600.0
"""How long a ``hang`` fault sleeps unless the client goes away first."""

_CONTROL_PREFIX = "/_demo/"
_SANCTIONED_COUNTRIES = frozenset({"KP", "IR"})


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """A failure or delay injected into calls to one path.

    Attributes:
        path: request path it applies to, compared for equality (any method), e.g.
            ``/validation/v1/income``. No query string.
        fail_first: the first ``fail_first`` matching calls (counted since start or the
            last reset) answer ``status`` with ``{"error": "injected failure", "call": n}``;
            later calls go through.
        status: HTTP status of the injected failures (100..599).
        delay_ms: extra delay in milliseconds before every matching call answers.
        hang: matching calls never answer; each waits up to an hour and stops as soon
            as the client disconnects or the server shuts down.
        retry_after_s: when set, injected failures carry ``Retry-After: <seconds>``
            (whole seconds are sent without a fraction).
    """

    path: str
    fail_first: int = 0
    status: int = 503
    delay_ms: int = 0
    hang: bool = False
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        _check_fault(self)


def _check_fault(fault: Fault) -> None:
    label = f"fault[{fault.path!r}]"
    if not isinstance(fault.path, str) or not fault.path.startswith("/") or "?" in fault.path:
        raise ConfigurationError("fault.path", fault.path, "must be a request path starting with '/' and without a query")
    for field, low, high in (("fail_first", 0, None), ("status", 100, 599), ("delay_ms", 0, None)):
        value = getattr(fault, field)
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ConfigurationError(f"{label}.{field}", value, f"must be an integer {bound}")
    if not isinstance(fault.hang, bool):
        raise ConfigurationError(f"{label}.hang", fault.hang, "must be true or false")
    ra = fault.retry_after_s
    if ra is not None and (not _is_number(ra) or ra < 0):
        raise ConfigurationError(f"{label}.retry_after_s", ra, "must be a finite number of seconds >= 0")


def parse_fault(text: str) -> Fault:
    """Parse a fault given on the command line.

    Format: ``PATH=FAIL_FIRST[:STATUS][:OPTION]...`` where OPTION is ``delay=MS``,
    ``retry_after=S`` or ``hang``. Examples:

    - ``/validation/v1/income=2``: the first 2 calls answer 503.
    - ``/validation/v1/income=2:500``: the first 2 calls answer 500.
    - ``/x=0:200:delay=500``: no failures; every call waits 500 ms more.
    - ``/ledger/v1/entries=0:hang``: every call hangs.
    - ``/compliance/v1/check=1:429:retry_after=2``: the first call answers 429 with
      ``Retry-After: 2``.

    Args:
        text: the fault description.

    Returns:
        The :class:`Fault`.

    Raises:
        ConfigurationError: the text does not follow the format or a value is out of range.
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigurationError("fault", text, "expected PATH=FAIL_FIRST[:STATUS][:delay=MS][:retry_after=S][:hang]")
    path, _, rest = text.strip().partition("=")
    tokens = rest.split(":")
    kwargs: dict[str, Any] = {"path": path}
    try:
        kwargs["fail_first"] = int(tokens[0])
    except ValueError:
        raise ConfigurationError("fault", text, f"FAIL_FIRST must be an integer, got {tokens[0]!r}") from None
    options = tokens[1:]
    if options and options[0].isdigit():
        kwargs["status"] = int(options.pop(0))
    for option in options:
        name, has_value, value = option.partition("=")
        try:
            if name == "hang" and not has_value:
                kwargs["hang"] = True
            elif name == "delay" and has_value:
                kwargs["delay_ms"] = int(value)
            elif name == "retry_after" and has_value:
                kwargs["retry_after_s"] = float(value)
            else:
                raise ConfigurationError("fault", text, f"unknown option {option!r}; use delay=MS, retry_after=S or hang")
        except ValueError:
            raise ConfigurationError("fault", text, f"option {option!r} needs a number") from None
    return Fault(**kwargs)


def _fault_from_json(item: Any, index: int) -> Fault:
    """A fault from ``POST /_demo/faults``: an object with Fault's fields, or a CLI string."""
    if isinstance(item, str):
        return parse_fault(item)
    if not isinstance(item, dict):
        raise ConfigurationError(f"faults[{index}]", item, "must be an object or a PATH=FAIL_FIRST string")
    unknown = set(item) - set(Fault.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"faults[{index}]", sorted(unknown), "unknown field(s)")
    if "path" not in item:
        raise ConfigurationError(f"faults[{index}].path", None, "is required")
    return Fault(**item)


# --------------------------------------------------------------------------- state


class _DemoState:
    """Counters, the call log and fault progress, shared by the event loop and callers.

    Guarded by a lock because tests read and reset it from other threads while the
    server's loop writes it.
    """

    def __init__(self, latency_ms: int, faults: Sequence[Fault]) -> None:
        self.latency_ms = latency_ms
        self.closing = threading.Event()  # set when the server begins to stop; ends hangs
        self._lock = threading.Lock()
        self._faults: list[Fault] = list(faults)
        self._fault_calls: list[int] = [0] * len(self._faults)
        self._total = 0
        self._by_path: collections.Counter[str] = collections.Counter()
        self._by_key: collections.Counter[str] = collections.Counter()
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_LIMIT)

    def record(self, method: str, path: str, key: str | None) -> list[tuple[Fault, int]]:
        """Count one call; returns each matching fault with this call's 1-based number."""
        with self._lock:
            self._total += 1
            self._by_path[f"{method} {path}"] += 1
            if key is not None:
                self._by_key[key] += 1
            self._log.append(
                {"method": method, "path": path, "idempotency_key": key, "at_ms": round(time.time() * 1000, 3)}
            )
            matches = []
            for i, fault in enumerate(self._faults):
                if fault.path == path:
                    self._fault_calls[i] += 1
                    matches.append((fault, self._fault_calls[i]))
            return matches

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self._total,
                "by_path": dict(self._by_path),
                "by_idempotency_key": dict(self._by_key),
                "log": list(self._log),
            }

    def reset(self) -> None:
        with self._lock:
            self._total = 0
            self._by_path.clear()
            self._by_key.clear()
            self._log.clear()
            self._fault_calls = [0] * len(self._faults)

    def set_faults(self, faults: Sequence[Fault]) -> None:
        with self._lock:
            self._faults = list(faults)
            self._fault_calls = [0] * len(self._faults)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) | {"calls": n} for f, n in zip(self._faults, self._fault_calls)]


class _CountAndInject:
    """Pure ASGI middleware: counts calls, then applies latency and faults.

    Pure ASGI (not ``BaseHTTPMiddleware``) so a hanging call can watch ``receive`` for
    the client's disconnect and stop sleeping.
    """

    def __init__(self, app: Any, state: _DemoState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        key = None
        for name, value in scope.get("headers", []):
            if name == b"idempotency-key":
                key = value.decode("latin-1")
        matches = self.state.record(scope["method"], scope["path"], key)
        if any(f.hang for f, _ in matches):
            if await _hang_until_disconnect(receive, self.state.closing):
                response = JSONResponse({"error": "demo services stopping"}, 503)
                await response(scope, receive, send)
            return
        delay_ms = self.state.latency_ms + sum(f.delay_ms for f, _ in matches)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        for fault, n in matches:
            if n <= fault.fail_first:
                headers = {}
                if fault.retry_after_s is not None:
                    ra = fault.retry_after_s
                    headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
                response = JSONResponse({"error": "injected failure", "call": n}, fault.status, headers=headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _hang_until_disconnect(receive: Any, closing: threading.Event) -> bool:
    """Wait for the client to go away, the server to stop, or an hour.

    Returns:
        False when the client left (nobody to answer); True when an answer is still due.
    """

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # drain the request body; the disconnect comes after it

    waiter = asyncio.ensure_future(client_gone())
    deadline = time.monotonic() + HANG_SECONDS
    try:
        # Polls the flag so a stop answers at once instead of waiting out the
        # server's graceful-shutdown timeout and being cancelled.
        while not waiter.done() and not closing.is_set() and time.monotonic() < deadline:
            await asyncio.wait({waiter}, timeout=0.05)
        client_left = waiter.done() and not waiter.cancelled() and waiter.exception() is None
    finally:
        waiter.cancel()
    return not client_left


# --------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    # NaN/Infinity are accepted by Python's JSON parser but cannot be answered in JSON.
    model_config = ConfigDict(allow_inf_nan=False)


class _IdentityBody(_Body):
    applicant: dict[str, Any]


class _IncomeBody(_Body):
    applicant: dict[str, Any]
    amount: StrictInt | StrictFloat


class _ItemBody(_Body):
    sku: StrictStr
    quantity: StrictInt
    unit_price: StrictInt | StrictFloat


class _ComplianceBody(_Body):
    amount: StrictInt | StrictFloat
    country: StrictStr


class _BadBody(Exception):
    """A body that parses but cannot be answered; becomes a 422."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _present(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return _is_number(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise _BadBody("a number in the request is too large to answer")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _json_or_none(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _BadBody(f"body is not JSON: {exc}") from None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------- app


#: Audit records the demo Ledger keeps (the oldest go first).
_AUDIT_KEPT = 100_000


def create_app(*, latency_ms: int = 0, faults: list[Fault] | None = None) -> FastAPI:
    """Build the demo services app.

    Args:
        latency_ms: milliseconds every counted (non ``/_demo/``) call waits before answering.
        faults: injected faults; replaceable later via ``POST /_demo/faults``.

    Returns:
        The FastAPI app; its counters live in ``app.state.demo``.

    Raises:
        ConfigurationError: ``latency_ms`` is negative or a fault is invalid.
    """
    if not _is_int(latency_ms) or latency_ms < 0:
        raise ConfigurationError("latency_ms", latency_ms, "must be an integer >= 0")
    faults = list(faults or [])
    for fault in faults:
        _check_fault(fault)
    state = _DemoState(latency_ms, faults)
    app = FastAPI(title="CORTX demo services", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.demo = state
    app.add_middleware(_CountAndInject, state=state)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Only type/loc/msg: an echoed "input" may hold NaN, which JSON cannot carry.
        detail = [{k: e.get(k) for k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request body", "detail": jsonable_encoder(detail)}, 422)

    @app.exception_handler(_BadBody)
    async def _bad(_: Request, exc: _BadBody) -> JSONResponse:
        return JSONResponse({"error": "invalid request body", "detail": str(exc)}, 422)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, __: ClientDisconnect) -> Response:
        # The caller hung up before its body arrived (a step cancelled or timed out during
        # an injected delay): nobody reads this answer, and it is not a server error.
        return Response(status_code=499)

    @app.post("/validation/v1/identity")
    async def identity(body: _IdentityBody) -> dict[str, Any]:
        a = body.applicant
        return {"check": "identity", "valid": _present(a.get("name")) and _present(a.get("id"))}

    @app.post("/validation/v1/income")
    async def income(body: _IncomeBody) -> dict[str, Any]:
        earned = body.applicant.get("income")
        # Missing, non-numeric or non-positive income cannot support any amount.
        if not _is_number(earned) or earned <= 0:
            return {"check": "income", "valid": False, "ratio": None}
        try:
            ratio = round(body.amount / earned, 3)
        except OverflowError:
            raise _BadBody("amount is too large") from None
        return {"check": "income", "valid": earned * 5 >= body.amount, "ratio": _finite(ratio)}

    @app.post("/validation/v1/item")
    async def item(body: _ItemBody) -> dict[str, Any]:
        total = _finite(body.quantity * body.unit_price)
        return {"sku": body.sku, "valid": body.quantity > 0 and body.unit_price >= 0, "total": total}

    @app.post("/compliance/v1/check")
    async def compliance(body: _ComplianceBody) -> dict[str, Any]:
        approved = body.amount <= 1_000_000 and body.country.upper() not in _SANCTIONED_COUNTRIES
        return {"approved": approved, "risk": "high" if body.amount > 10_000 else "low"}

    @app.post("/compliance/v1/manager-review")
    async def manager_review() -> dict[str, Any]:
        return {"approved": True, "reviewer": "manager-on-duty"}

    @app.post("/ledger/v1/entries")
    async def ledger(request: Request) -> dict[str, Any]:
        key = request.headers.get("idempotency-key")
        body = await _json_or_none(request)  # parsed even with a key: bad JSON is still a 422
        seed = key.encode() if key is not None else _canonical(body)
        return {"recorded": True, "entry_id": "le-" + hashlib.sha256(seed).hexdigest()[:12]}

    # The audit log (FDD §4.1): records kept once per Idempotency-Key, oldest dropped past the cap.
    audit: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    @app.post("/ledger/v1/audit")
    async def ledger_audit(request: Request) -> dict[str, Any]:
        body = await _json_or_none(request)
        if not isinstance(body, dict):
            raise _BadBody("body must be a JSON object (an audit record)")
        key = request.headers.get("idempotency-key") or hashlib.sha256(_canonical(body)).hexdigest()
        duplicate = key in audit
        if not duplicate:
            audit[key] = body
            while len(audit) > _AUDIT_KEPT:
                audit.popitem(last=False)
        return {"recorded": True, "audit_id": "au-" + hashlib.sha256(key.encode()).hexdigest()[:12], "duplicate": duplicate}

    @app.get("/ledger/v1/audit")
    async def ledger_audit_records(execution_id: str | None = None) -> dict[str, Any]:
        records = [r for r in audit.values() if execution_id is None or r.get("execution_id") == execution_id]
        return {"records": records}

    @app.api_route("/echo/{rest:path}", methods=["GET", "POST", "PUT"])
    async def echo(request: Request, rest: str) -> dict[str, Any]:
        return {
            "method": request.method,
            "path": request.url.path,
            "body": await _json_or_none(request),
            "query": dict(request.query_params),
        }

    @app.get("/_demo/calls")
    async def calls() -> dict[str, Any]:
        return state.snapshot()

    @app.post("/_demo/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return {"reset": True}

    @app.get("/_demo/faults")
    async def get_faults() -> list[dict[str, Any]]:
        return state.faults()

    @app.post("/_demo/faults")
    async def set_faults(request: Request) -> Any:
        data = await _json_or_none(request)
        if not isinstance(data, list):
            return JSONResponse({"error": "invalid faults", "detail": "body must be a JSON list of faults"}, 422)
        try:
            new = [_fault_from_json(item, i) for i, item in enumerate(data)]
        except (ConfigurationError, TypeError) as exc:
            return JSONResponse({"error": "invalid faults", "detail": str(exc)}, 422)
        state.set_faults(new)
        return state.faults()

    @app.get("/_demo/health")
    async def health() -> dict[str, Any]:
        return {"ok": True}

    return app


# --------------------------------------------------------------------------- running


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError("host", host, "the demo services are a test double and only listen on loopback addresses")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket; binding it here lets port 0 pick a free port with no race."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    # Listen now: connections that arrive before the server loop starts wait in the backlog
    # instead of being refused, so "listening on" is true the moment it is printed.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server that also ends the app's hanging calls when told to exit."""

    def __init__(self, config: uvicorn.Config, closing: threading.Event) -> None:
        super().__init__(config)
        self.closing = closing

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.closing.set()
        super().handle_exit(sig, frame)


def _server(app: FastAPI, graceful_s: float) -> _Server:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # Hanging calls would otherwise hold shutdown for up to an hour.
        timeout_graceful_shutdown=graceful_s,
    )
    return _Server(config, app.state.demo.closing)


def serve(host: str = "127.0.0.1", port: int = 8700, latency_ms: int = 0, faults: list[Fault] | None = None) -> None:
    """Run the demo services in the foreground until interrupted.

    Prints ``demo services listening on http://HOST:PORT`` (the real port when ``port``
    is 0) to stdout before serving.

    Args:
        host: a loopback address (``127.0.0.1``, ``::1``, ``localhost``).
        port: TCP port; 0 picks a free one.
        latency_ms: milliseconds added to every counted call.
        faults: injected faults.

    Raises:
        ConfigurationError: ``host`` is not loopback, or an argument is invalid.
        OSError: the port cannot be bound.
    """
    _check_loopback(host)
    app = create_app(latency_ms=latency_ms, faults=faults)
    sock = _bind(host, port)
    print(f"demo services listening on {_url(host, sock.getsockname()[1])}", flush=True)
    try:
        _server(app, graceful_s=2.0).run(sockets=[sock])
    finally:
        sock.close()


class DemoServer:
    """Demo services running on a background thread; see :func:`start_in_thread`.

    Attributes:
        url: ``http://127.0.0.1:PORT`` without a trailing slash.
        port: the bound TCP port.
        app: the FastAPI app.
    """

    def __init__(self, app: FastAPI, server: _Server, thread: threading.Thread, sock: socket.socket) -> None:
        self.app = app
        self.port: int = sock.getsockname()[1]
        self.url = _url("127.0.0.1", self.port)
        self._server, self._thread, self._sock = server, thread, sock

    def calls(self) -> dict[str, Any]:
        """The same data as ``GET /_demo/calls``, read in-process."""
        return self.app.state.demo.snapshot()

    def reset(self) -> None:
        """Clear counters and fault progress, as ``POST /_demo/reset``."""
        self.app.state.demo.reset()

    def set_faults(self, faults: list[Fault]) -> None:
        """Replace the faults (and their progress), as ``POST /_demo/faults``."""
        for fault in faults:
            _check_fault(fault)
        self.app.state.demo.set_faults(faults)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and join the thread; idempotent.

        Args:
            timeout_s: seconds to wait for a graceful stop before forcing it.
        """
        self._server.closing.set()
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DemoServer(url={self.url!r})"


def start_in_thread(port: int = 0, **kwargs: Any) -> DemoServer:
    """Start the demo services on ``127.0.0.1`` in a daemon thread.

    Args:
        port: TCP port; 0 (default) picks a free one.
        **kwargs: passed to :func:`create_app` (``latency_ms``, ``faults``).

    Returns:
        A started :class:`DemoServer`; call ``stop()`` or use it as a context manager.

    Raises:
        ConfigurationError: invalid ``kwargs``.
        OSError: the port cannot be bound.
        RuntimeError: the server thread died or did not accept connections within 10 s.
    """
    app = create_app(**kwargs)
    sock = _bind("127.0.0.1", port)
    server = _server(app, graceful_s=1.0)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"demo-services-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    demo = DemoServer(app, server, thread, sock)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if server.started and _accepts(demo.port):
            return demo
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"demo services failed to start: {failure[0] if failure else 'thread exited'!r}")
        time.sleep(0.01)
    demo.stop(timeout_s=2.0)
    raise RuntimeError(f"demo services did not accept connections on {demo.url} within 10 s")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m serve_app.demo_services [--host H] [--port P] [--latency-ms MS] [--fault F]...``.

    ``--fail`` is accepted as another spelling of ``--fault`` (the spelling of ``cortx-workflow
    demo-services``); F is parsed by :func:`parse_fault`.

    Returns:
        The process exit code (2 for invalid arguments).
    """
    from serve_app.cli import FAULT_HELP  # one wording of the fault syntax for both command lines

    parser = argparse.ArgumentParser(prog="demo_services", description="Run the CORTX demo upstream services.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument(
        "--fault",
        "--fail",
        dest="fault",
        action="append",
        default=[],
        metavar="FAULT",
        help=FAULT_HELP,
    )
    args = parser.parse_args(argv)
    try:
        faults = [parse_fault(text) for text in args.fault]
        serve(args.host, args.port, args.latency_ms, faults)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
