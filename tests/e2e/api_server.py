"""A real HTTP server for API tests, and the helpers the API tests share.

Server: an ASGI app served by uvicorn on a free loopback port.

:func:`serve_in_thread` binds ``127.0.0.1:0`` first (so the port is known and free), runs
uvicorn with lifespan on in a daemon thread, waits until it accepts connections, and
returns an :class:`ApiServer` whose ``stop()`` shuts it down (running the app's shutdown,
which closes its database connections).

Example::

    with serve_in_thread(create_app(settings, registry)) as server:
        httpx.get(server.url + "/healthz")

Helpers: the API keys of the tests (:data:`KEYS`), example packs (:func:`loan_pack`,
:func:`echo_pack`), :func:`wait_for` (poll a run's status), :func:`assert_problem` (an
RFC 9457 answer with the expected status and code), :func:`executions_of` (rows in the
database), :func:`kill_hosts` (end a namespace's ExecutionHosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

__all__ = [
    "ADMIN", "DEPLOYER", "EXECUTOR", "KEYS", "LOAN_INPUTS", "PROBLEM", "READER", "ROOT", "Api", "ApiServer",
    "assert_problem", "deploy_yaml", "echo_pack", "executions_of", "free_port", "kill_hosts", "loan_pack", "new_id",
    "running_api", "serve_in_thread", "wait_for",
]

ROOT = Path(__file__).parents[2]
LOAN_YAML = (ROOT / "examples" / "loan-approval.yaml").read_text()
LOAN_INPUTS: dict[str, Any] = json.loads((ROOT / "examples" / "loan-approval.inputs.json").read_text())
PROBLEM = "application/problem+json"

ADMIN, EXECUTOR, DEPLOYER, READER = (f"k-{name}-{secrets.token_urlsafe(18)}" for name in ("admin", "exec", "deploy", "read"))
KEYS = {ADMIN: ["admin"], EXECUTOR: ["execute", "read"], DEPLOYER: ["deploy", "read"], READER: ["read"]}


@dataclass
class Api:
    url: str
    database_url: str
    namespace: str = ""  # Ray namespace of the app's ExecutionHosts (when a test needs them)

    def client(self, key: str | None = ADMIN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def kill_hosts(namespace: str) -> None:
    import ray

    from actors.host import shared_host_name

    for index in range(4):
        try:
            ray.kill(ray.get_actor(shared_host_name(index), namespace=namespace), no_restart=True)
        except ValueError:
            continue


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiServer:
    """A running uvicorn server; ``url`` is ``http://127.0.0.1:PORT`` (no trailing slash)."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket) -> None:
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down gracefully (lifespan shutdown runs), then force it; idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_api(
    request: Any, demo_url: str, tmp_path_factory: Any, label: str, *, keys: dict[str, list[str]] | None = None,
    timeout_s: float = 120.0, database_url: str | None = None, settings: dict[str, Any] | None = None,
    **app_options: Any,
) -> Iterator[Api]:
    """The API with keys, served by uvicorn, on the database ``request.param`` names.

    ``request.param`` is ``sqlite`` (a fresh file) or ``postgres`` (the session database),
    unless ``database_url`` is given; ``settings`` overrides engine settings. The app's
    hosts get a Ray namespace of their own and are killed afterwards.
    """
    from actors.settings import Settings
    from serve_app.api import create_app
    from tests.conftest import demo_registry

    if database_url is None and request.param == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp(label) / f'{label}.db'}"
    elif database_url is None:
        database_url = request.getfixturevalue("postgres_url")
    namespace = f"{label}-{uuid.uuid4().hex[:8]}"
    # The session database keeps runs of hosts killed at other tests' ends ``running``:
    # a limit no test reaches unless it sets its own.
    fields: dict[str, Any] = {"execution_hosts": 1, "workflow_timeout_seconds": timeout_s,
                              "max_concurrent_executions": 100_000, **(settings or {})}
    engine_settings = Settings(database_url=database_url, **fields)
    app = create_app(engine_settings, demo_registry(demo_url), api_keys=keys or KEYS, namespace=namespace, **app_options)  # type: ignore[arg-type]
    server = serve_in_thread(app)
    try:
        yield Api(server.url, database_url, namespace)
    finally:
        server.stop()
        kill_hosts(namespace)


def serve_in_thread(app: Any, start_timeout_s: float = 15.0) -> ApiServer:
    """Serve ``app`` on a free 127.0.0.1 port in a daemon thread; return once it accepts connections.

    Raises:
        RuntimeError: the server did not start in time (the reason, when known).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"api-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    api = ApiServer(server, thread, sock)
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if server.started:
            return api
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"API server failed to start: {failure[0] if failure else 'thread exited'!r}")
        time.sleep(0.02)
    api.stop(2.0)
    raise RuntimeError(f"API server did not start within {start_timeout_s} s")


# --------------------------------------------------------------------------- helpers


def loan_pack(pack_id: str, version: str = "1.0.0") -> str:
    return LOAN_YAML.replace("id: loan-approval\n", f"id: {pack_id}\n", 1).replace(
        'version: "1.0.0"', f'version: "{version}"', 1
    )


def echo_pack(pack_id: str, version: str = "1.0.0", name: str = "Echo") -> dict[str, Any]:
    return {
        "id": pack_id,
        "name": name,
        "version": version,
        "inputs": {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}},
        "outputs": {"n": "${ steps.ping.outputs.body.n }"},
        "steps": [{"id": "ping", "type": "service_call", "service": "echo", "endpoint": "/v1/ping",
                   "inputs": {"n": "${ inputs.n }"}}],
    }


def new_id(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def deploy_yaml(client: httpx.Client, text: str) -> httpx.Response:
    return client.post("/v1/packs", content=text, headers={"Content-Type": "application/yaml"})


def wait_for(client: httpx.Client, execution_id: str, done: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/workflows/executions/{execution_id}")
        assert response.status_code == 200, response.text
        record = response.json()
        if record["status"] in done or time.monotonic() > deadline:
            return record
        time.sleep(0.1)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"https://cortx.dev/problems/{code}"
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["instance"] == response.request.url.path
    return body


def executions_of(database_url: str, pack_id: str) -> list[str]:
    from persistence import open_store

    async def read() -> list[str]:
        store = await open_store(database_url, pool_size=1)
        try:
            return [r.execution_id for r in await store.list_executions(limit=100_000) if r.workflow_pack_id == pack_id]
        finally:
            await store.close()

    return asyncio.run(read())
