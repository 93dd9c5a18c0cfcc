"""What the task database's errors mean for the callers of the stores: is it worth trying again?

tasks/database.py turns such errors into `StoreUnavailable` (the API answers 503 with Retry-After,
and workers, maintenance and the callback sender wait and go on); any other database error is a
fault. Only tasks/database.py imports this module: the layers above never see a driver's exception.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError

# SQLSTATEs of a server that is gone or not there yet: class 08 (connection exception), and the
# shutdowns and start-up of PostgreSQL (admin_shutdown, crash_shutdown, cannot_connect_now).
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# A connect that fails below the driver: the host's network is gone or the route is (a host cut off,
# found by the multi-host test: the connect raised a bare OSError 113 and the worker stopped).
_NETWORK_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
                             errno.ETIMEDOUT, errno.ECONNABORTED})  # fmt: skip


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` means the database could not be reached or dropped the connection (down,
    restarting, network trouble), so the same call may succeed later. What the drivers raise: a bare
    `ConnectionError` when the connect is refused, an `OSError` with a network errno or a
    `TimeoutError` when there is no route or no answer, a `DBAPIError` that SQLAlchemy marks
    `connection_invalidated` when an open connection breaks, or one with the server's SQLSTATE."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or (isinstance(sqlstate, str) and sqlstate.startswith(_UNREACHABLE_SQLSTATES))


# Errors of a database that is there but cannot take the call now; the same call may succeed later.
# SQLite: another writer held the lock past the busy timeout, or the disk is full or failing.
_TRANSIENT_SQLITE_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR")
# PostgreSQL: class 53 (insufficient resources: disk full, out of memory, too many connections),
# serialization failure, deadlock, lock not available.
_TRANSIENT_SQLSTATES = ("53", "40001", "40P01", "55P03")


def is_transient_error(exc: BaseException) -> bool:
    """True when the same call may succeed later: the database is unreachable (`is_connection_error`),
    busy past its lock timeout, or out of space."""
    if is_connection_error(exc):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return (isinstance(sqlite_name, str) and sqlite_name.startswith(_TRANSIENT_SQLITE_ERRORS)) or (
        isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES)
    )


def describe_connection_error(exc: BaseException) -> str:
    """One line for a log: the driver's own message, without SQLAlchemy's SQL and links."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
