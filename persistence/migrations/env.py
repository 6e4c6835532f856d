"""Alembic environment for the CORTX Workflow Service schema.

Two ways in:

* **Programmatic** (the normal path): :func:`persistence.engine.run_migrations` opens a
  transaction on the service's async engine, takes the migration lock, and calls
  ``alembic.command.upgrade`` inside ``AsyncConnection.run_sync`` with the synchronous
  connection in ``config.attributes["connection"]``. This file then migrates on that
  connection, inside that transaction (the Alembic cookbook's async recipe).
* **Command line**: ``alembic -c <ini> upgrade head`` with ``sqlalchemy.url`` set in the
  ini file or ``DATABASE_URL`` in the environment; an async engine is created here.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from persistence.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL", "")
    if not url:
        raise RuntimeError("set sqlalchemy.url in the Alembic config or DATABASE_URL in the environment")
    from persistence.engine import normalize_url

    return normalize_url(url).render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _locked_run_migrations(connection: Connection) -> None:
    from persistence.engine import take_migration_lock

    take_migration_lock(connection)
    _do_run_migrations(connection)


async def _run_async_migrations() -> None:
    # Same engine settings (SQLite pragmas, BEGIN IMMEDIATE) and lock as the service uses.
    from persistence.engine import WRITE_OPTION, create_engine_for, normalize_url

    engine = create_engine_for(normalize_url(_url()))
    try:
        async with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
            await connection.run_sync(_locked_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Migrate on the handed-over connection, or on a fresh engine from the command line."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _do_run_migrations(connection)
    else:
        asyncio.run(_run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
