"""Wake-ups across processes on PostgreSQL (tasks/notify.py): two stores on one database, as two
processes would have, with waits far longer than the wake-ups should take.

Every wait below is bounded by `POLL` (5 s, what the poll fallback would take) and the wake-up must
come within `WAKE` (1 s): a failure means the change was not announced across stores, not that the
machine was slow. PostgreSQL only (QWEN_IMAGE_TEST_POSTGRES_URL); SQLite has no listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bench.fake_engine import InstantEngine
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from qwen_image_server.domain import ModelName
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import TaskStatus
from qwen_image_server.tasks.notify import APPLICATION_NAME, notify_changed
from qwen_image_server.tasks.sql import SqlTaskStore
from tests.conftest import TINY_EVERYWHERE
from tests.contracts.conftest import POSTGRES_ENV, new_task, postgres_backend, sqlite_backend

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"PostgreSQL only: set {POSTGRES_ENV}"),
]
POLL = 5.0
WAKE = 1.0
MODELS = (ModelName.QWEN_IMAGE,)


@pytest.fixture
async def pg_url(tmp_path: Path) -> AsyncIterator[str]:
    async with postgres_backend(tmp_path) as url:
        yield url


@pytest.fixture
async def store_a(pg_url: str) -> AsyncIterator[SqlTaskStore]:
    async with _started(pg_url) as store:
        yield store


@pytest.fixture
async def store_b(store_a: SqlTaskStore, pg_url: str) -> AsyncIterator[SqlTaskStore]:
    async with _started(pg_url) as store:
        yield store


class _started:
    def __init__(self, url: str) -> None:
        self.store = SqlTaskStore.open(url)

    async def __aenter__(self) -> SqlTaskStore:
        await self.store.start()
        return self.store

    async def __aexit__(self, *_exc: object) -> None:
        await self.store.close()


def _waiter(store: SqlTaskStore, task_id: str) -> asyncio.Task[None]:
    return asyncio.create_task(store.wait_for_change(task_id, POLL))


async def _woken(waiter: asyncio.Task[None]) -> None:
    """The waiter returned within WAKE (not at its POLL timeout)."""
    await asyncio.wait_for(waiter, WAKE)


async def test_a_change_made_through_one_store_wakes_a_reader_of_the_other(
    store_a: SqlTaskStore, store_b: SqlTaskStore
) -> None:
    new = new_task()
    created = _waiter(store_b, new.id)
    await asyncio.sleep(0)  # registered before the change
    await store_a.create(new)
    await _woken(created)

    for change in (
        lambda: store_a.claim("worker-a", MODELS, lease_seconds=60),
        lambda: store_a.request_cancel(new.id),
        lambda: store_a.finish_canceled(new.id, "worker-a"),
    ):
        waiter = _waiter(store_b, new.id)
        await asyncio.sleep(0)
        await change()
        await _woken(waiter)
    # Delivered after commit: what woke the reader is there to read.
    assert (await store_b.get(new.id)).status is TaskStatus.CANCELED


async def test_a_task_queued_through_one_store_wakes_the_idle_workers_of_the_other(
    store_a: SqlTaskStore, store_b: SqlTaskStore
) -> None:
    queued = asyncio.Event()
    store_b.on_task_queued(queued.set)
    await store_a.create(new_task())
    await asyncio.wait_for(queued.wait(), WAKE)


async def test_an_idle_worker_in_another_process_starts_a_new_task_at_once(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(
        **TINY_EVERYWHERE, data_dir=tmp_path / "data", database_url=pg_url, models=MODELS,
        poll_interval_seconds=POLL, progress_interval_seconds=0.05,
    )  # fmt: skip
    service = Service.build(settings, engine=InstantEngine(), run_worker=True)
    async with service.running(), _started(pg_url) as api_side:
        # The first task may be claimed at the worker's first look; after it ends the worker is idle.
        first = await api_side.create(new_task())
        await _until_status(api_side, first.id, TaskStatus.SUCCEEDED, timeout=30)
        second = await api_side.create(new_task())
        await _until_status(api_side, second.id, TaskStatus.SUCCEEDED, timeout=WAKE)


async def test_after_the_listener_is_cut_polling_still_works_and_notifications_come_back(
    store_a: SqlTaskStore, store_b: SqlTaskStore, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qwen_image_server.tasks.notify")
    listener = store_b.database.listener
    assert listener is not None and listener.listening and listener.backend_pid is not None
    old_pid = listener.backend_pid
    await _terminate_listener(pg_url, old_pid)

    # Meanwhile a reader waits one (short) poll and reads the change: nothing hangs.
    task = await store_a.create(new_task())
    await asyncio.wait_for(store_b.wait_for_change(task.id, 0.2), POLL)
    assert (await store_b.get(task.id)).status is TaskStatus.QUEUED

    await asyncio.wait_for(_until_relistening(store_b, old_pid), POLL)
    waiter = _waiter(store_b, task.id)
    await asyncio.sleep(0)
    await store_a.claim("worker-a", MODELS, lease_seconds=60)
    await _woken(waiter)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("lost the connection" in message for message in messages) == 1, messages
    assert sum("listening for task changes again" in message for message in messages) == 1, messages


async def test_a_rolled_back_transaction_notifies_nobody(store_a: SqlTaskStore, store_b: SqlTaskStore) -> None:
    rolled_back, committed = _waiter(store_b, "rolled-back"), _waiter(store_b, "committed")
    await asyncio.sleep(0)

    def notify_then_fail(conn: Connection) -> None:
        notify_changed(conn, ["rolled-back"])
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await store_a.database.run_write(notify_then_fail)
    await store_a.database.run_write(lambda conn: notify_changed(conn, ["committed"]))
    # One connection delivers in commit order: had the first been sent, it would have come first.
    await _woken(committed)
    assert not rolled_back.done()
    rolled_back.cancel()


async def test_sqlite_has_no_listener(tmp_path: Path) -> None:
    async with sqlite_backend(tmp_path) as url, _started(url) as store:
        assert store.database.listener is None


async def _until_status(store: SqlTaskStore, task_id: str, status: TaskStatus, *, timeout: float) -> None:
    async def reached() -> None:
        while (await store.get(task_id)).status is not status:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(reached(), timeout)


async def _terminate_listener(pg_url: str, pid: int) -> None:
    """End the listening session `pid` (found by its application_name) from another connection."""
    admin = create_async_engine(make_url(pg_url), poolclass=NullPool)
    try:
        async with admin.begin() as conn:
            query = text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database() AND pid = :pid"
            )
            terminated = (await conn.execute(query, {"name": APPLICATION_NAME, "pid": pid})).scalar_one()
    finally:
        await admin.dispose()
    assert terminated


async def _until_relistening(store: SqlTaskStore, old_pid: int) -> None:
    listener = store.database.listener
    assert listener is not None
    while not (listener.listening and listener.backend_pid not in (None, old_pid)):
        await asyncio.sleep(0.01)


async def test_a_store_told_not_to_listen_holds_no_listener_but_still_notifies(
    pg_url: str, store_b: SqlTaskStore
) -> None:
    async with _started_quiet(pg_url) as quiet:
        assert quiet.database.listener is None
        new = new_task()
        waiter = _waiter(store_b, new.id)
        await asyncio.sleep(0)
        await quiet.create(new)
        await _woken(waiter)


class _started_quiet(_started):
    def __init__(self, url: str) -> None:
        self.store = SqlTaskStore.open(url, listen=False)
