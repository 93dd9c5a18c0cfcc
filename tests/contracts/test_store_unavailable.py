"""A database that cannot take a call now is `StoreUnavailable` from every store (tasks/database.py
translates the drivers' errors once): 503 with Retry-After, and the message the API has always sent.
PostgreSQL: the server goes away (its port closes, its connections drop). SQLite: another program
holds the write lock past the busy timeout."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from qwen_image_server.errors import StoreUnavailable
from qwen_image_server.tasks import sqlite as sqlite_store
from qwen_image_server.tasks.keys import SqlKeyStore
from qwen_image_server.tasks.model import utcnow
from qwen_image_server.tasks.outbox import SqlCallbackStore
from qwen_image_server.tasks.sql import SqlTaskStore
from qwen_image_server.tasks.store import TaskNotFound
from tests.contracts.conftest import POSTGRES_ENV, new_task, postgres_backend, sqlite_backend

pytestmark = pytest.mark.anyio

StoreCall = Callable[[SqlTaskStore], Awaitable[object]]
# One read and one write of each store on the shared database.
CALLS: dict[str, StoreCall] = {
    "tasks.get": lambda store: store.get("task_x"),
    "tasks.create": lambda store: store.create(new_task()),
    "keys.keys_required": lambda store: SqlKeyStore(store.database).keys_required(),
    "keys.create": lambda store: SqlKeyStore(store.database).create("k"),
    "callbacks.next_due_at": lambda store: SqlCallbackStore(store.database).next_due_at(),
    "callbacks.disable_url": lambda store: SqlCallbackStore(store.database).disable_url(
        "https://x.example/", "gone", utcnow()
    ),
}


class Forwarder:
    """A local port that forwards to the database server until `cut()`: then the port closes and
    every connection through it drops, as when the server goes away."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(_copy(reader, upstream_writer), _copy(upstream_reader, writer), return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


@pytest.fixture
async def gone_postgres(tmp_path: Path) -> AsyncIterator[SqlTaskStore]:
    """A store on PostgreSQL (through a `Forwarder`) whose server has just gone away."""
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"PostgreSQL only: set {POSTGRES_ENV}")
    async with postgres_backend(tmp_path) as url:
        direct = make_url(url)
        forwarder = Forwarder(direct.host or "127.0.0.1", direct.port or 5432)
        through = direct.set(host="127.0.0.1", port=await forwarder.start())
        store = SqlTaskStore.open(through.render_as_string(hide_password=False), listen=False)
        await store.start()
        try:
            await store.create(new_task())  # the way works
            await forwarder.cut()
            yield store
        finally:
            await store.close()


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_store_on_a_database_that_went_away_raises_store_unavailable(
    gone_postgres: SqlTaskStore, call: str
) -> None:
    with pytest.raises(StoreUnavailable) as refused:
        await asyncio.wait_for(CALLS[call](gone_postgres), 30)
    error = refused.value
    assert (error.status, error.code, error.trouble) == (503, "database_unavailable", "unreachable")
    assert error.message == "the task database is unreachable right now; try again shortly"
    assert error.headers == {"Retry-After": "5"}
    assert error.detail  # the driver's own line, for the log


async def test_a_store_on_a_locked_sqlite_database_raises_store_unavailable_for_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)  # SQLite gives up on the lock after 0.1 s
    async with sqlite_backend(tmp_path) as url:
        store = SqlTaskStore.open(url)
        await store.start()
        try:
            created = await store.create(new_task())
            with closing(sqlite3.connect(make_url(url).database or "", isolation_level=None)) as holder:
                holder.execute("BEGIN IMMEDIATE")  # another program holds the write lock
                for call in ("tasks.create", "keys.create", "callbacks.disable_url"):
                    with pytest.raises(StoreUnavailable) as refused:
                        await CALLS[call](store)
                    assert refused.value.trouble == "busy or out of space", call
                    assert "database is locked" in refused.value.detail
                assert await store.get(created.id) == created  # reads go on beside the writer (WAL)
                holder.execute("ROLLBACK")
            assert await store.create(new_task())  # and writes once the lock is free
        finally:
            await store.close()


async def test_other_database_errors_are_not_store_unavailable(store: SqlTaskStore) -> None:
    with pytest.raises(Exception) as failed:
        async with store.database.read() as conn:
            await conn.exec_driver_sql("SELECT * FROM no_such_table")
    assert not isinstance(failed.value, StoreUnavailable)  # a fault of ours, not an outage: a 500
    with pytest.raises(TaskNotFound):
        await store.get("task_x")  # the database answers as before
