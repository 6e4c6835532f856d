"""A real HTTP stub upstream for engine tests (the stubbed upstreams of the fault catalogue).

One :class:`StubServer` listens on ``127.0.0.1`` at a free port in a background thread and
serves every configured service under ``/<service>``, so :meth:`StubServer.registry` can
point each service name at ``http://127.0.0.1:PORT/<service>``. Routes are keyed
``"<service> <METHOD> <path>"`` as in the case files; a path ending in ``*`` matches by
prefix (exact routes win over prefix routes). A route's behaviour is one of:

* ``"echo"`` or ``{"echo": True}``: 200 with the request's JSON body (``{}`` when it had none);
* ``{"respond": [{"status", "body", "headers"}, ...]}``: the listed answers in order, then
  the last one again for every later request (``body`` absent: an empty body);
* ``{"respond_script": {"first_n": N, "status": S, "body": B, "then": {...}}}``: the first
  ``N`` requests get ``S`` (and ``B``), every later one gets ``then``;
* ``"hang"`` or ``{"hang": True}``: never answers; the connection is dropped at :meth:`stop`;

plus, with any of them, ``"delay_ms"``: wait that long before answering. In the strings of
a ``respond`` body, ``<request-url>`` is replaced by the URL the request was sent to (an
upstream that echoes its URL in an error, as many do).

Every request is recorded (route key, method, path, headers, parsed body, ``time.monotonic()``
at arrival) under a lock, before it is answered. A request no route matches is recorded
under its own ``"<service> <METHOD> <path>"`` key and answered 404.

Example::

    with StubServer({"payments POST /v1/charge": {"respond": [{"status": 503}]}}) as stub:
        client = make_client(db_url, stub.registry())
        ...
        assert stub.count("payments POST /v1/charge") == 4
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Recorded", "StubServer"]


@dataclass(frozen=True)
class Recorded:
    """One request the stub received."""

    key: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() at arrival


@dataclass
class _Route:
    key: str
    service: str
    method: str
    path: str
    prefix: bool
    spec: dict[str, Any]
    served: int = 0  # requests answered so far, for respond/respond_script
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, body: Any) -> tuple[int, Any, dict[str, str]] | None:
        """``(status, body, headers)`` for the next request; ``None`` to hang. ``...`` body: none."""
        spec = self.spec
        if spec.get("hang"):
            return None
        if spec.get("echo"):
            return 200, ({} if body is None else body), {}
        with self.lock:
            index = self.served
            self.served += 1
        if "respond" in spec:
            answers = spec["respond"]
            answer = answers[min(index, len(answers) - 1)]
        else:
            script = spec["respond_script"]
            answer = script if index < int(script["first_n"]) else script["then"]
        return int(answer.get("status", 200)), answer.get("body", ...), dict(answer.get("headers") or {})


def _normalise(spec: Any) -> dict[str, Any]:
    if spec in ("echo", "hang"):
        return {spec: True}
    if not isinstance(spec, Mapping):
        raise ValueError(f"a stub behaviour is 'echo', 'hang' or a mapping, not {spec!r}")
    spec = dict(spec)
    behaviour = spec.pop("behaviour", None)
    if behaviour in ("echo", "hang"):
        spec[behaviour] = True
    kinds = [k for k in ("echo", "respond", "respond_script", "hang") if spec.get(k)]
    if len(kinds) != 1:
        raise ValueError(f"a stub route needs exactly one of echo/respond/respond_script/hang: {spec!r}")
    if "respond" in spec and not spec["respond"]:
        raise ValueError("respond needs at least one answer")
    return spec


def _with_url(value: Any, url: str) -> Any:
    """``value`` with ``<request-url>`` in its strings replaced by ``url``."""
    if isinstance(value, str):
        return value.replace("<request-url>", url)
    if isinstance(value, dict):
        return {k: _with_url(v, url) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_url(v, url) for v in value]
    return value


class StubServer:
    """Stub upstream services on one loopback port; see the module docstring.

    Args:
        routes: ``{"<service> <METHOD> <path>": behaviour}``.
    """

    def __init__(self, routes: Mapping[str, Any]) -> None:
        self._routes: list[_Route] = []
        for key, spec in routes.items():
            service, method, path = key.split(" ", 2)
            prefix = path.endswith("*")
            self._routes.append(
                _Route(key, service, method.upper(), path.rstrip("*"), prefix, _normalise(spec))
            )
        self._services = sorted({r.service for r in self._routes})
        self._records: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-server", daemon=True)
        self._thread.start()

    # --- matching and recording ------------------------------------------------------------

    def _match(self, service: str, method: str, path: str) -> _Route | None:
        candidates = [r for r in self._routes if r.service == service and r.method == method]
        for route in candidates:
            if not route.prefix and route.path == path:
                return route
        prefixed = [r for r in candidates if r.prefix and path.startswith(r.path)]
        return max(prefixed, key=lambda r: len(r.path)) if prefixed else None

    def _record(self, item: Recorded) -> None:
        with self._lock:
            self._records.append(item)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

            def _handle(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                full = self.path.split("?", 1)[0]
                _, _, rest = full.partition("/")
                service, _, sub = rest.partition("/")
                path = "/" + sub
                method = self.command.upper()
                route = stub._match(service, method, path)
                key = route.key if route else f"{service} {method} {path}"
                stub._record(Recorded(key, method, path, dict(self.headers.items()), body, arrived))
                if route is None:
                    self._send(404, {"error": f"no stub route for {key}"}, {})
                    return
                delay = route.spec.get("delay_ms")
                if delay and stub._stopping.wait(float(delay) / 1000):
                    return
                answer = route.next_answer(body)
                if answer is None:  # hang until the server stops, then drop the connection
                    stub._stopping.wait()
                    self.close_connection = True
                    return
                status, answer_body, answer_headers = answer
                if answer_body is not ...:
                    answer_body = _with_url(answer_body, stub.url + self.path)
                self._send(status, answer_body, answer_headers)

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = b"" if body is ... else json.dumps(body).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, str(value))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler

    # --- what the tests read ---------------------------------------------------------------

    def requests(self, key: str | None = None) -> list[Recorded]:
        """Recorded requests in arrival order, all or those of route ``key``."""
        with self._lock:
            return [r for r in self._records if key is None or r.key == key]

    def count(self, key: str) -> int:
        """How many requests route ``key`` received."""
        return len(self.requests(key))

    def bodies(self, key: str) -> list[Any]:
        """Parsed request bodies of route ``key`` (None when a request had none)."""
        return [r.body for r in self.requests(key)]

    def times(self, key: str) -> list[float]:
        """``time.monotonic()`` arrival times of route ``key``'s requests."""
        return [r.at for r in self.requests(key)]

    def sequence(self) -> list[str]:
        """Route keys of all requests, in arrival order."""
        return [r.key for r in self.requests()]

    def registry(self) -> Any:
        """A ServiceRegistry mapping each stubbed service to ``http://127.0.0.1:PORT/<service>``."""
        from actors.registry import ServiceRegistry

        return ServiceRegistry.from_mapping(
            {"services": {name: {"base_url": f"{self.url}/{name}"} for name in self._services}}
        )

    # --- lifetime ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Release hanging requests, stop serving and close the port. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
