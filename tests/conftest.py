"""Session-wide fixtures: the PostgreSQL test database, a SQLite file per test, one local Ray.

PostgreSQL: tests marked ``postgres`` get a database created for this session on the server
at ``CORTX_TEST_POSTGRES_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``)
and dropped at the end. Under ``CI=true`` an unreachable server fails those tests; elsewhere
they are skipped with the reason.

Ray: one local instance per test session (``ray.init`` costs 3 to 11 s here), started on
first use by the ``ray_session`` fixture and shut down at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _admin_dsn() -> str:
    url = os.environ.get("CORTX_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_dsn(), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A ``postgresql+asyncpg://`` URL of a database made for this test session."""
    name = f"cortx_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is reported
        message = f"PostgreSQL is not reachable at {_admin_dsn()}: {exc!r}"
        if _in_ci():
            pytest.fail(message + " (CI=true: tests that need PostgreSQL must not skip)")
        pytest.skip(message)
    base = _admin_dsn().rsplit("/", 1)[0]
    yield base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name
    try:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A ``sqlite+aiosqlite://`` URL of a fresh file in the test's temporary folder."""
    return f"sqlite+aiosqlite:///{tmp_path / 'cortx.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs twice: on a SQLite file and on the session's PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``database_url``, but the PostgreSQL database is new and empty for this one test.

    For tests that count every row of a table (admission counts all ``running`` runs).
    """
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    session_url = str(request.getfixturevalue("postgres_url"))  # fails/skips like the others
    name = f"cortx_fresh_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield session_url.rsplit("/", 1)[0] + "/" + name
    try:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Like ``database_url``, plus ``memory://`` for the MemoryStore."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{request.param}_url"))


def with_store(url: str, body: Any) -> Any:
    """Open a store on ``url``, run the coroutine function ``body(store)`` in a fresh event loop, close it."""
    from persistence.store import open_store

    async def run() -> Any:
        store = await open_store(url)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def stored_checkpoints(url: str, execution_id: str) -> Any:
    """The step checkpoints of a run, read from the database at ``url``."""
    return with_store(url, lambda store: store.load_checkpoints(execution_id))


def wait_for(predicate: Any, timeout_s: float = 60, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it is true; AssertionError naming ``what`` after ``timeout_s`` s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def loan_inputs() -> dict[str, Any]:
    """The inputs of ``examples/loan-approval.yaml`` (``examples/loan-approval.inputs.json``)."""
    return dict(json.loads((Path(__file__).parents[1] / "examples" / "loan-approval.inputs.json").read_text()))


def stored_events(url: str, execution_id: str) -> Any:
    """The outbox events of a run, read from the database at ``url``."""
    return with_store(url, lambda store: store.load_events(execution_id))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session."""
    import ray

    from actors.driver import local_ray_system_config
    from actors.settings import Settings

    if not ray.is_initialized():
        # Serve's data path as `cortx-workflow serve` and the cluster configs set it, so the
        # Serve-tier tests go through the path that is shipped (Ray reads it at start).
        from serve_app.ingress import DATA_PATH_SETTINGS

        for name, value in DATA_PATH_SETTINGS.items():
            os.environ.setdefault(name, value)
        ray.init(
            address="local",  # never a cluster `ray start` left recorded on the machine
            include_dashboard=False,
            namespace=f"cortx-test-{uuid.uuid4().hex[:6]}",
            log_to_driver=False,
            num_cpus=4,
            _system_config=local_ray_system_config(Settings.step_task_num_cpus, num_cpus=4),
        )
    yield
    ray.shutdown()


# --- engine fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file shared by the engine tests of this session (fresh execution ids per test)."""
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('engine') / 'engine.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine_db(request: pytest.FixtureRequest) -> str:
    """Engine tests using this run on the session's SQLite file and on its PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("engine_sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def demo_services() -> Iterator[object]:
    """The demo Validation/Compliance/Ledger services on a free loopback port, for the session."""
    from serve_app.demo_services import start_in_thread

    server = start_in_thread(port=0)
    yield server
    server.stop()


def demo_registry(url: str) -> object:
    """A service registry for the demo services on ``url``: validation, compliance, ledger, and echo."""
    from actors.registry import ServiceRegistry

    return ServiceRegistry.from_mapping(
        {"services": {name: {"base_url": f"{url}/{name}"} for name in ("validation", "compliance", "ledger", "echo")}}
    )


@pytest.fixture
def make_client(ray_session: None) -> Iterator[object]:
    """Factory ``make_client(database_url, registry, **settings)`` of WorkflowClients on the session's Ray.

    Each client gets its own Ray namespace, so its ExecutionHosts are bound to its database and
    registry; the hosts are killed when the test ends.
    """
    import ray

    from actors.driver import WorkflowClient
    from actors.settings import Settings

    made: list[str] = []

    def factory(database_url: str, registry: object, **overrides: object) -> WorkflowClient:
        namespace = f"t-{uuid.uuid4().hex[:10]}"
        made.append(namespace)
        # Tests share databases, and runs of hosts killed at a test's end stay ``running``:
        # a limit no test reaches unless it sets its own (admission tests use a fresh database).
        fields = {
            "execution_hosts": 1,
            "workflow_timeout_seconds": 120.0,
            "max_concurrent_executions": 100_000,
            # The session's demo Ledger is shared: only tests of the audit log turn it on.
            "ledger_audit": False,
            **overrides,
        }
        settings = Settings(database_url=database_url, **fields)  # type: ignore[arg-type]
        return WorkflowClient(settings, registry, namespace=namespace)  # type: ignore[arg-type]

    yield factory
    from actors.host import shared_host_name

    for namespace in made:
        for index in range(8):
            try:
                ray.kill(ray.get_actor(shared_host_name(index), namespace=namespace), no_restart=True)
            except ValueError:
                continue
