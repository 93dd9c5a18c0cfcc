"""SQLite-only behaviour of the task store, kept in this one place.

Everything else in the store is portable SQL. What SQLite needs on top, so that an API server and
several worker processes can share one database file without "database is locked":

- WAL journal: readers never block the writer and the writer never blocks readers.
- `synchronous=NORMAL`: safe with WAL (a power cut may lose the last commits, never corrupts).
- `busy_timeout`: a connection that finds the database locked waits instead of failing at once.
- Every transaction starts with `BEGIN IMMEDIATE`: it takes the write lock up front. A deferred
  transaction that reads and then writes has to upgrade its lock, and SQLite fails such an upgrade
  with SQLITE_BUSY at once (no busy wait) when another connection wrote in between; starting
  immediate makes all writers queue on the busy timeout instead. It also makes the claim's
  `SELECT ... FOR UPDATE SKIP LOCKED` (a no-op on SQLite) safe: writers are serialised.
  The one exception: connections from an engine with the execution option `READ_ONLY_OPTION` (the
  store's read-only queries) start a plain deferred `BEGIN`, or none at all on the synchronous
  engine the stores read through (`create_sync_sqlite_engine`). A transaction that never writes
  never upgrades its lock, so it cannot hit that error, and under WAL it reads alongside the writer
  instead of queueing behind it (API polling does not wait for worker heartbeats).

For that the driver's own transaction handling is switched off (`isolation_level = None`) and
SQLAlchemy's "begin" event emits the BEGIN (the recipe in SQLAlchemy's SQLite dialect documentation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

BUSY_TIMEOUT_MS = 30_000  # the default of setting sqlite_busy_timeout_seconds
# An execution option (harmless on other databases): "this engine's transactions only read".
READ_ONLY_OPTION = "qwen_image_read_only"
ASYNC_DRIVER = "aiosqlite"


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_url(database_url: str | URL) -> URL:
    """The URL with the async driver (`sqlite:///x.db` becomes `sqlite+aiosqlite:///x.db`).

    Refuses in-memory databases: each pooled connection would see its own empty database (or, with
    a single shared connection, concurrent transactions would collide)."""
    url = make_url(database_url)
    if url.get_driver_name() != ASYNC_DRIVER:
        url = url.set(drivername=f"sqlite+{ASYNC_DRIVER}")
    database = url.database or ""
    if database in ("", ":memory:") or "mode=memory" in database or url.query.get("mode") == "memory":
        raise ValueError("the task store needs an SQLite file, not an in-memory database (sqlite:///path/tasks.db)")
    return url


def create_sqlite_engine(database_url: str | URL, *, busy_timeout_ms: int | None = None) -> AsyncEngine:
    """An async engine on an SQLite file (created with its folder if missing), set up as above."""
    engine = create_async_engine(_file_url(database_url))
    install_hooks(engine.sync_engine, busy_timeout_ms=BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms)
    return engine


def create_sync_sqlite_engine(database_url: str | URL, *, busy_timeout_ms: int | None = None) -> Engine:
    """A synchronous engine on the same file, set up the same way, for `Database`'s threads (each
    connection is used by one thread at a time, though not always the same one).

    Its reads start no transaction: each statement reads its own snapshot, which saves a BEGIN
    and a COMMIT per read (a fifth of a poll's time in the database thread). The stores' read
    functions are one statement, or read a second that stands on its own (a task's queue
    position re-reads the task's status), so no read needs two statements to agree."""
    url = _file_url(database_url).set(drivername="sqlite+pysqlite")
    engine = create_engine(url, connect_args={"check_same_thread": False})
    install_hooks(
        engine, busy_timeout_ms=BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms, begin_reads=False
    )
    return engine


def _file_url(database_url: str | URL) -> URL:
    """The async driver's URL with `~` expanded, its folder created if missing."""
    url = sqlite_url(database_url)
    if url.database and not url.database.startswith("file:"):
        path = Path(url.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    return url


def install_hooks(sync_engine: Engine, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, begin_reads: bool = True) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN/COMMIT away from the driver; `_on_begin` emits BEGIN IMMEDIATE instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching the journal mode needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        if not read_only:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif begin_reads:
            connection.exec_driver_sql("BEGIN")
