"""Readers waiting on a task are woken by a change made through the same store, not a poll later."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from qwen_image_server.tasks.changes import TaskChanges
from qwen_image_server.tasks.sql import SqlTaskStore
from tests.contracts.conftest import new_task

pytestmark = pytest.mark.anyio


async def test_a_change_wakes_only_the_waiters_of_that_task() -> None:
    changes = TaskChanges()
    woken = asyncio.create_task(changes.wait("a", timeout=30))
    other = asyncio.create_task(changes.wait("b", timeout=30))
    await asyncio.sleep(0.01)
    changes.changed("a")
    await asyncio.wait_for(woken, timeout=1)
    assert not other.done()
    other.cancel()


async def test_without_a_change_the_wait_ends_at_its_timeout() -> None:
    started = time.monotonic()
    await TaskChanges().wait("a", timeout=0.05)
    assert 0.04 < time.monotonic() - started < 1


async def test_a_store_transition_wakes_a_reader_at_once(tmp_path: Path) -> None:
    store = SqlTaskStore.open(f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}")
    await store.start()
    try:
        task = await store.create(new_task())
        started = time.monotonic()
        reader = asyncio.create_task(store.wait_for_change(task.id, timeout=30))
        await asyncio.sleep(0.01)
        await store.request_cancel(task.id)
        await asyncio.wait_for(reader, timeout=5)
        assert time.monotonic() - started < 5
    finally:
        await store.close()
