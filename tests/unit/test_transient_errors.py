"""Which database errors make the engine wait and try again (persistence.store.is_transient_error).

The chains are built the way SQLAlchemy's asyncpg adapter builds them (the driver's
exception becomes the ``__cause__`` of the adapter's ``Error``, which SQLAlchemy wraps in
``DBAPIError.orig``): a PostgreSQL restart surfaced this shape and a run failed on it.
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from persistence.store import is_transient_error

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def _wrapped(driver_error: BaseException, adapter: type[BaseException]) -> BaseException:
    try:
        try:
            raise driver_error
        except Exception as error:
            raise adapter(str(error)) from error
    except Exception as translated:
        return sa_exc.DBAPIError.instance("INSERT ...", {}, translated, DBAPI.Error)


@pytest.mark.parametrize(
    "driver_error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        ConnectionRefusedError(111, "Connect call failed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_lost_or_refused_connections_are_transient(driver_error: BaseException) -> None:
    assert is_transient_error(_wrapped(driver_error, DBAPI.Error))
    assert is_transient_error(driver_error)


@pytest.mark.parametrize(
    "driver_error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.exceptions.StringDataRightTruncationError("value too long for type character varying(36)"),
        asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        ValueError("a value the store refuses"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refused_values_are_not_transient(driver_error: BaseException) -> None:
    assert not is_transient_error(_wrapped(driver_error, DBAPI.Error))
    assert not is_transient_error(driver_error)


def test_a_refusal_raised_while_handling_a_lost_connection_is_not_transient() -> None:
    # Only explicit causes count: an IntegrityError raised inside an ``except`` block that
    # handled a lost connection is still a refusal and must not be retried forever.
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise sa_exc.IntegrityError("INSERT ...", {}, Exception("duplicate key")) from None
    except sa_exc.IntegrityError as error:
        assert not is_transient_error(error)
