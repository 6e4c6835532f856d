"""Database URLs, async engines and schema migrations.

* :func:`normalize_url` accepts ``postgresql+asyncpg://``, ``sqlite+aiosqlite:///`` and
  their plain forms (``postgresql://``, ``sqlite:///``, rewritten to the async drivers);
  anything else is a :class:`~dsl.errors.ConfigurationError` naming ``DATABASE_URL``.
* :func:`create_engine_for` builds the engine. SQLite: the parent folder is created,
  every connection gets ``PRAGMA busy_timeout=10000``, ``journal_mode=WAL`` and
  ``foreign_keys=ON``, the pool holds exactly one connection (so a process funnels its
  writes through one connection), and SQLAlchemy (not the sqlite3 driver) emits
  ``BEGIN`` — ``BEGIN IMMEDIATE`` for connections carrying the :data:`WRITE_OPTION`
  execution option, so a write transaction takes SQLite's write lock up front instead
  of failing to upgrade a read lock when another process wrote in between.
  PostgreSQL: the requested pool size, a small overflow, a connect timeout, and a ping
  before reusing a connection that sat idle in the pool for :data:`PING_AFTER_IDLE_S` or
  more (:func:`_ping_if_idle`; SQLAlchemy's ``pool_pre_ping`` would ping before every
  checkout, three round trips each with asyncpg, the largest single cost of a checkpoint).
* :func:`run_migrations` runs Alembic ``upgrade head`` in one transaction on the
  engine, without an ``alembic.ini``. Concurrent migrators are serialised: PostgreSQL
  by ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``, SQLite by ``BEGIN IMMEDIATE``
  (plus one retry on "already exists" as a belt-and-braces measure); within one event
  loop an ``asyncio.Lock`` also keeps Alembic's global ``context`` from being shared.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from dsl.errors import ConfigurationError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "PING_AFTER_IDLE_S",
    "SETTING",
    "SQLITE_BUSY_TIMEOUT_MS",
    "WRITE_OPTION",
    "alembic_config",
    "check_schema",
    "create_engine_for",
    "json_dumps",
    "mask_url",
    "normalize_url",
    "probe",
    "run_migrations",
    "take_migration_lock",
]

#: The setting every configuration error names.
SETTING: Final = "DATABASE_URL"
_URL_RULE: Final = "must be a postgresql+asyncpg://, sqlite+aiosqlite:/// or memory:// URL"
#: Folder holding ``env.py`` and ``versions/``.
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating ("CORTXWF1" as 8 bytes).
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"CORTXWF1", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: Seconds to wait for a PostgreSQL connection before giving up.
CONNECT_TIMEOUT_S: Final = 10.0
#: How long a SQLite statement waits for another process's lock, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
#: A pooled PostgreSQL connection idle at least this long (seconds) is pinged before reuse.
PING_AFTER_IDLE_S: Final = 1.0
_IDLE_SINCE: Final = "cortx_idle_since"
#: Execution option: begin the transaction as a writer (``BEGIN IMMEDIATE`` on SQLite).
WRITE_OPTION: Final = "cortx_write"

_PG_DRIVERS: Final = frozenset({"postgresql", "postgresql+asyncpg"})
_SQLITE_DRIVERS: Final = frozenset({"sqlite", "sqlite+aiosqlite"})
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask_url(url: str | URL) -> str:
    """``url`` as text with its password replaced by ``***`` (works on unparseable text too)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return _PASSWORD_IN_URL.sub(r"\1***@", url)


def normalize_url(url: str) -> URL:
    """Parse a database URL and point it at the async driver.

    Args:
        url: ``postgresql+asyncpg://user:pw@host:port/db``, ``postgresql://...``,
            ``sqlite+aiosqlite:///path/to/file.db`` or ``sqlite:///path``.

    Returns:
        The URL with driver ``postgresql+asyncpg`` or ``sqlite+aiosqlite``.

    Raises:
        ConfigurationError: (``DATABASE_URL``) any other scheme, an unparseable URL, or
            a SQLite URL without a file path (in-memory SQLite: use ``memory://``).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(SETTING, url, _URL_RULE)
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(SETTING, mask_url(url), _URL_RULE) from exc
    if parsed.drivername in _PG_DRIVERS:
        return parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername in _SQLITE_DRIVERS:
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
            raise ConfigurationError(
                SETTING, mask_url(parsed), "a SQLite URL needs a file path (sqlite+aiosqlite:///path/to/file.db)"
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ConfigurationError(SETTING, mask_url(parsed), _URL_RULE)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN (see _on_sqlite_begin) instead of the sqlite3 driver,
    # which would skip it for SELECT and DDL statements.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Put the database file in WAL mode, waiting out other processes doing the same.

    The mode is kept in the file, so this is a no-op once any connection has done it. The
    switch needs an exclusive lock, and SQLite answers "database is locked" at once (without
    the busy handler) when several connections open a fresh file together: try again for
    up to :data:`SQLITE_BUSY_TIMEOUT_MS`. The waits block this thread; they happen only while
    a fresh file is being created by several processes at once.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # noqa: BLE001 - the driver's adapted OperationalError
            locked = "locked" in str(exc).lower() or "busy" in str(exc).lower()
            if not locked or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _on_sqlite_begin(conn: Connection) -> None:
    writer = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


# JSON columns: compact, refusing NaN/Infinity on every backend (PostgreSQL's JSONB
# rejects them; SQLite would otherwise store them).
_json_dumps = functools.partial(json.dumps, allow_nan=False, separators=(",", ":"))
#: Escapes PostgreSQL refuses in JSONB ("unsupported Unicode escape sequence"): NUL, and a
#: UTF-16 surrogate that is not half of a pair. json.dumps writes every character beyond
#: U+FFFF (an emoji) as a high-low pair, which is valid: matching pairs too sent every
#: value holding an emoji through the slow, recursive clean-up below (8 times slower).
_UNSTORABLE_ESCAPE = re.compile(
    r"\\u0000"
    r"|\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})"
    r"|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}"
)


def json_dumps(value: Any) -> str:
    """How JSON columns are serialised: compact, refusing NaN/Infinity on every backend.

    A NUL character or a lone surrogate in any string (an upstream's error body, a task's
    exception message) is replaced by U+FFFD, which every backend stores: PostgreSQL refuses
    both, and a checkpoint that cannot be written would fail the run for the wrong reason.
    """
    text = _json_dumps(value)
    if "\\u" in text and _UNSTORABLE_ESCAPE.search(text):
        text = _json_dumps(storable_text(value))
    return text


def storable_text(value: Any) -> Any:
    """``value`` with NUL and lone surrogates in its strings (and keys) replaced by U+FFFD."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value)
        return value
    if isinstance(value, dict):
        return {storable_text(k): storable_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable_text(v) for v in value]
    return value


def create_engine_for(url: URL, *, pool_size: int = 5) -> AsyncEngine:
    """Create the async engine for a normalised URL (see module docstring for settings).

    Args:
        url: result of :func:`normalize_url`.
        pool_size: PostgreSQL connections kept open (ignored for SQLite, which uses one).

    Raises:
        ConfigurationError: ``pool_size`` < 1, or the SQLite folder cannot be created.
    """
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ConfigurationError("pool_size", pool_size, "must be an integer >= 1")
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        try:
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(SETTING, mask_url(url), f"cannot create the database folder: {exc}") from exc
        engine = create_async_engine(
            url,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            json_serializer=json_dumps,
        )
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=min(2, pool_size),
        connect_args={"timeout": CONNECT_TIMEOUT_S},
        json_serializer=json_dumps,
    )
    event.listen(engine.sync_engine, "handle_error", _on_pg_error)
    event.listen(engine.sync_engine.pool, "checkin", _note_idle_since)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


def _note_idle_since(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pool ``checkout`` hook: ping a connection that sat in the pool :data:`PING_AFTER_IDLE_S` or more.

    A connection that went back to the pool a moment ago is handed out as it is: under load
    that is every checkout, and the ping would cost three round trips each time. One that
    sat idle longer (the server may have restarted, a firewall may have cut it) is pinged,
    and a failed ping makes the pool open a fresh connection instead (SQLAlchemy's
    documented ``DisconnectionError`` protocol). A connection that breaks in the window
    fails its statement: the engine's writes wait and try again
    (:func:`persistence.store.is_transient_error`), and SQLAlchemy then invalidates the
    whole pool, so every other pooled connection is replaced too.
    """
    since = record.info.get(_IDLE_SINCE)
    if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
        return  # just opened, or just used
    try:
        dbapi_connection.ping()
    except Exception as exc:  # noqa: BLE001 - any failure: replace the connection
        raise DisconnectionError(f"pooled connection failed its ping: {type(exc).__name__}") from exc


def is_broken_protocol_error(exc: BaseException | None) -> bool:
    """True for asyncpg's ``InternalClientError`` ("another operation is in progress").

    asyncpg raises it instead of "connection is closed" when the server ends a session in
    the middle of a transaction (a restart, ``pg_terminate_backend``). The connection is
    unusable from then on, but SQLAlchemy does not count it as a disconnect, so without
    :func:`_on_pg_error` it would go back to the pool and fail every later checkout.
    """
    while exc is not None:
        if type(exc).__name__ == "InternalClientError" or "another operation is in progress" in str(exc):
            return True
        exc = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else None
    return False


def _on_pg_error(context: ExceptionContext) -> None:
    # Also called for pool pre-ping failures: marking the error a disconnect makes the pool
    # throw the connection away and open a new one instead of raising.
    if is_broken_protocol_error(context.original_exception) or is_broken_protocol_error(context.sqlalchemy_exception):
        context.is_disconnect = True


def _reason(exc: BaseException, url: URL) -> str:
    """One line naming the driver-level cause of ``exc``, with the password removed."""
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    message = lines[0] if lines else ""
    if url.password:
        message = message.replace(str(url.password), "***")
    name = type(cause).__name__
    return f"{name}: {message}" if message else name


async def probe(engine: AsyncEngine) -> None:
    """Open one connection and run ``SELECT 1``.

    Raises:
        ConfigurationError: (``DATABASE_URL``, masked URL) the database cannot be reached;
            the rule names the driver's reason, e.g. ``ConnectionRefusedError: ...``.
    """
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - every driver failure becomes one configuration error
        raise ConfigurationError(
            SETTING, mask_url(engine.url), f"cannot connect to the database: {_reason(exc, engine.url)}"
        ) from exc


def alembic_config() -> Config:
    """An Alembic ``Config`` pointing at :data:`MIGRATIONS_DIR` (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def take_migration_lock(connection: Connection) -> None:
    """On PostgreSQL, wait for and hold the migration advisory lock until the transaction ends.

    A second migrator blocks here and then finds the schema already at head. (SQLite needs
    nothing: the transaction was opened with ``BEGIN IMMEDIATE``.)
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def _upgrade_sync(connection: Connection) -> None:
    take_migration_lock(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


#: One lock per event loop: Alembic keeps its ``context`` in module globals, so two
#: upgrades interleaved on one loop (two engines opened with ``asyncio.gather``) must
#: not run at once even before the database lock is reached.
_LOOP_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _loop_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _LOOP_LOCKS.get(loop)
    if lock is None:
        lock = _LOOP_LOCKS[loop] = asyncio.Lock()
    return lock


def _already_exists(exc: BaseException) -> bool:
    return "already exists" in str(exc).lower()


async def run_migrations(engine: AsyncEngine) -> None:
    """Upgrade the schema to the newest revision, in one transaction.

    Safe to call from several processes (or engines) at once on a fresh database.

    Raises:
        ConfigurationError: (``DATABASE_URL``) the migration failed; the rule carries
            the driver's reason.
    """
    writer = engine.execution_options(**{WRITE_OPTION: True})
    for attempt in (1, 2):
        try:
            async with _loop_lock(), writer.begin() as conn:
                await conn.run_sync(_upgrade_sync)
            return
        except (DBAPIError, sqlite3.Error) as exc:
            if attempt == 1 and _already_exists(exc):
                continue  # another migrator won the race; the retry sees its tables
            raise ConfigurationError(
                SETTING, mask_url(engine.url), f"schema migration failed: {_reason(exc, engine.url)}"
            ) from exc


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse a database whose schema is not at the newest revision (used when not migrating).

    Raises:
        ConfigurationError: (``DATABASE_URL``) the schema is missing or at another revision.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    async with engine.connect() as conn:
        current = await conn.run_sync(_current_revision)
    if current != head:
        raise ConfigurationError(
            SETTING,
            mask_url(engine.url),
            f"database schema is at revision {current!r}, expected {head!r}; run the migrations (migrate=True)",
        )
