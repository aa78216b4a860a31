"""Database errors in Flotilla's terms, and the one place driver errors are translated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from sqlalchemy import exc as sa_exc

from flotilla.errors import FlotillaError, PermanentError, RetryableError


class DatabaseUnavailableError(RetryableError):
    """The database could not be reached, dropped the connection or did not answer in time."""


class DatabaseError(PermanentError):
    """The database refused a statement (a constraint, a bad value, a schema mismatch)."""


class StoreClosedError(FlotillaError):
    """The store was used before it was opened or after it was closed."""


# Driver errors that say "the connection, not the statement, is the problem".
_TRANSIENT = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    OSError,
)


@asynccontextmanager
async def translated(what: str, *, timeout: timedelta) -> AsyncIterator[None]:
    """Bound the database work inside by ``timeout`` and translate its errors.

    Args:
        what: What is being done, for the error message ("commit deployment").
        timeout: The longest the whole block may take.

    Raises:
        DatabaseUnavailableError: connection trouble or no answer within ``timeout``.
        DatabaseError: the database refused the statement.
    """
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            yield
    except FlotillaError:
        raise
    except TimeoutError as exc:
        # Checked before OSError, of which the builtin TimeoutError is a subclass.
        raise DatabaseUnavailableError(f"{what}: no answer within {timeout}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc, _TRANSIENT):
            raise DatabaseUnavailableError(f"{what}: {_reason(exc)}") from exc
        raise DatabaseError(f"{what}: {_reason(exc)}") from exc
    except _TRANSIENT as exc:
        raise DatabaseUnavailableError(f"{what}: {_reason(exc)}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise DatabaseError(f"{what}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    # The DBAPI's own message, without SQLAlchemy's statement dump and doc link.
    origin = getattr(exc, "orig", None) or exc
    return f"{type(origin).__name__}: {origin}".splitlines()[0]
