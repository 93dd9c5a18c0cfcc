"""`Database`: the one handle on the task database that the stores share.

A process opens one `Database` (a URL: `sqlite+aiosqlite:///path/tasks.db`, a plain `sqlite:///`
URL gets the async driver, or e.g. `postgresql+asyncpg://...`) and hands it to the stores that keep
their rows there: `SqlTaskStore` (tasks/sql.py), `SqlKeyStore` (tasks/keys.py) and
`SqlCallbackStore` (tasks/outbox.py). It owns what they share:

- the engines: one that writes, and the same one marked read-only (on SQLite its transactions
  start a deferred BEGIN and read alongside the writer: tasks/sqlite.py);
- how a store's work runs: `run_read(work)` and `run_write(work)` take a plain function of a
  (synchronous) SQLAlchemy `Connection` and run it as one transaction. On PostgreSQL that is
  `run_sync` on the asyncpg engine (each statement still awaits the network, through SQLAlchemy's
  greenlet bridge). On SQLite it is one call into a thread that holds a synchronous connection:
  SQLite is a library, not a server, and the async driver (aiosqlite) hops threads for every
  cursor, execute, fetch, BEGIN and ROLLBACK (about a dozen hops for a poll, each a wake-up of
  another thread under the GIL); one hop per transaction keeps the event loop free (polls went from
  0.20 to 0.61 of bench/api_ceiling.py's ceiling with this and the queue-position change). Reads run in two
  threads alongside each other (WAL); writes in one thread, this process's writers' turn;
- `read()` and `write()`: an `AsyncConnection` for the few that need one (migrations, tests);
- on SQLite, this process's turn to write (see `write`);
- the migrations, run by `start()` (tasks/migrations);
- on PostgreSQL, the connection that LISTENs for other processes' changes (tasks/notify.py), which
  feeds `changes`, the wake-ups of this process's waiters.

The drivers' errors are translated here, once, for every store: `read()` and `write()` turn an
error that says the database cannot take the call now (tasks/db_errors.py: unreachable, busy past
its lock timeout, out of space) into `StoreUnavailable`, a `QwenImageError` with a 503 and
Retry-After. Any other database error (a constraint, a bug) passes unchanged: a store may expect one
(`IntegrityError`), and otherwise it is a fault, not an outage. `start()` is not translated: a
process that cannot reach its database at start-up fails with the driver's own account of why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from qwen_image_server.errors import StoreUnavailable
from qwen_image_server.tasks.changes import TaskChanges
from qwen_image_server.tasks.db_errors import describe_connection_error, is_connection_error, is_transient_error
from qwen_image_server.tasks.migrations import upgrade_database
from qwen_image_server.tasks.notify import TaskChangeListener
from qwen_image_server.tasks.sqlite import READ_ONLY_OPTION, create_sqlite_engine, create_sync_sqlite_engine, is_sqlite

RETRY_AFTER_SECONDS = 5  # about what a database restart or fail-over takes
# Reads at once on SQLite. 2 beat 4 (fewer threads contend less for the GIL: polls 642 -> 742 per s,
# p99 92 -> 59 ms in bench/api_ceiling.py); 1 did as well but makes every read wait behind a slow one.
SQLITE_READ_THREADS = 2
T = TypeVar("T")


class Database:
    """The task database of one process (see the module docstring). `listen`: on PostgreSQL, hear
    other processes' changes; a short-lived command that waits on nothing passes False and saves
    the extra connection."""

    def __init__(self, url: str | URL, *, listen: bool = True, busy_timeout_ms: int | None = None) -> None:
        self._url: URL = make_url(url)
        self._busy_timeout_ms = busy_timeout_ms  # SQLite's; None: sqlite.BUSY_TIMEOUT_MS
        self._listen = listen and not is_sqlite(self._url)
        self._engine: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None
        self._listener: TaskChangeListener | None = None
        self._sqlite: _SqliteThreads | None = None
        self._write_turn: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if is_sqlite(self._url) else contextlib.nullcontext()
        )
        self.changes = TaskChanges()  # this process's waiters, woken by its stores and its listener

    @property
    def url(self) -> URL:
        return self._url

    @property
    def listener(self) -> TaskChangeListener | None:
        """What hears other processes' changes (PostgreSQL, once started); None on SQLite."""
        return self._listener

    async def start(self) -> None:
        """Connect, bring the schema up to date, and listen (PostgreSQL). Again: nothing."""
        if self._engine is not None:
            return
        engine = (
            create_sqlite_engine(self._url, busy_timeout_ms=self._busy_timeout_ms)
            if is_sqlite(self._url)
            else create_async_engine(self._url, pool_pre_ping=True)
        )
        try:
            await upgrade_database(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._reader = engine.execution_options(**{READ_ONLY_OPTION: True})
        if is_sqlite(self._url):
            self._sqlite = _SqliteThreads(create_sync_sqlite_engine(self._url, busy_timeout_ms=self._busy_timeout_ms))
        if self._listen:
            self._listener = TaskChangeListener(engine, self.changes)
            await self._listener.start()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        engine, self._engine, self._reader = self._engine, None, None
        if engine is not None:
            await engine.dispose()
        sqlite, self._sqlite = self._sqlite, None
        if sqlite is not None:
            await asyncio.to_thread(sqlite.close)

    async def run_read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in a transaction that only reads; its result."""
        self._started(self._reader)
        with translated_errors():
            if self._sqlite is not None:
                return await self._sqlite.read(work)
        async with self.read() as conn:
            return await conn.run_sync(work)

    async def run_write(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in a transaction that writes, committed when it returns (rolled back if
        it raises); its result."""
        self._started(self._engine)
        if self._sqlite is not None:
            with translated_errors():
                async with self._write_turn:
                    return await self._sqlite.write(work)
        async with self.write() as conn:
            return await conn.run_sync(work)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that writes, committed when the block ends (rolled back on an error).

        On SQLite, this process's writers take turns on an asyncio lock before BEGIN IMMEDIATE:
        SQLite has one write lock per file, and a connection that finds it taken sleeps in SQLite's
        busy handler (up to 100 ms a try), which under load made writes wait seconds for a lock
        that was free again after a millisecond. Other processes still meet at the busy handler."""
        engine = self._started(self._engine)
        with translated_errors():
            async with self._write_turn, engine.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for queries that only read (no write turn, no write lock)."""
        engine = self._started(self._reader)
        with translated_errors():
            async with engine.connect() as conn:
                yield conn

    @staticmethod
    def _started(engine: AsyncEngine | None) -> AsyncEngine:
        if engine is None:
            raise RuntimeError("the task database is not started; call start() first")
        return engine


class _SqliteThreads:
    """Synchronous SQLite connections, each used in one call of a thread: reads in a few threads,
    writes in one (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = engine.execution_options(**{READ_ONLY_OPTION: True})
        self._reads = ThreadPoolExecutor(SQLITE_READ_THREADS, thread_name_prefix="sqlite-read")
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")

    async def read(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, _in_transaction, self._reader, work)

    async def write(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, _in_transaction, self._engine, work)

    def close(self) -> None:
        self._reads.shutdown()
        self._writes.shutdown()
        self._engine.dispose()


def _in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return work(conn)


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Raise `StoreUnavailable` for a driver error that says "not now" (see the module docstring)."""
    try:
        yield
    except (DBAPIError, OSError, TimeoutError) as exc:  # OSError: a connect with no route (ConnectionError is one)
        if not is_transient_error(exc):
            raise
        trouble = "unreachable" if is_connection_error(exc) else "busy or out of space"
        raise StoreUnavailable(trouble, describe_connection_error(exc), retry_after=RETRY_AFTER_SECONDS) from exc
