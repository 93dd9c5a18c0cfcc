"""A database that is busy past its lock timeout is a transient fault: the API answers 503 with
Retry-After in the caller's dialect, the worker waits and goes on, nothing is lost."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks import sqlite as sqlite_store
from tests.api.conftest import FAST_SERVICE, TINY_TASK, wait_until
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio


async def test_a_locked_database_is_503_and_the_worker_waits_it_out(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 200)  # SQLite gives up on the lock after 0.2 s
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data")
    service = Service.build(settings, engine=engine, run_worker=True)
    async with service.running(), asgi_client(service) as client:
        first = (await client.post("/v1/tasks", json=TINY_TASK)).json()
        await wait_until(client, first["id"], "succeeded")
        # Another program takes SQLite's write lock and keeps it, as an external writer would.
        tasks_db = settings.data_dir / "tasks.db"
        with closing(sqlite3.connect(tasks_db, isolation_level=None, check_same_thread=False)) as holder:
            # Off the loop: were the service mid-write, a blocking wait here would stop it committing.
            await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
            native = await client.post("/v1/tasks", json=TINY_TASK)
            assert native.status_code == 503, native.text
            assert native.json()["error"]["code"] == "database_unavailable"
            assert "busy" in native.json()["error"]["message"] and int(native.headers["retry-after"]) > 0
            openai = await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "256x256"})
            assert openai.status_code == 503 and openai.json()["error"]["type"], openai.text
            await asyncio.sleep(1.0)  # the worker's claims and announcements meet the lock meanwhile
            holder.execute("ROLLBACK")
        assert not service.worker_failed
        second = (await client.post("/v1/tasks", json=TINY_TASK)).json()
        assert (await wait_until(client, second["id"], "succeeded"))["status"] == "succeeded"
        assert not service.worker_failed


async def test_a_full_sqlite_database_is_transient_not_a_crash(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" (here from a page limit, as a full disk gives it) is
    classified as transient: the API answers 503, workers wait. Other errors are not transient."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from qwen_image_server.tasks.db_errors import is_transient_error

    engine = sqlite_store.create_sqlite_engine(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TABLE blobs (data BLOB)"))
            await conn.commit()
            await conn.execute(text("PRAGMA max_page_count = 20"))
            with pytest.raises(DBAPIError) as full:
                await conn.execute(text("INSERT INTO blobs VALUES (zeroblob(1000000))"))
            await conn.rollback()
            with pytest.raises(DBAPIError) as wrong:
                await conn.execute(text("SELECT * FROM no_such_table"))
    finally:
        await engine.dispose()
    assert "full" in str(full.value)
    assert is_transient_error(full.value)
    assert not is_transient_error(wrong.value)
