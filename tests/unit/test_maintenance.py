"""The periodic jobs on a real SQLite store and local result folder."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from qwen_image_server.domain import GenerationRequest, ImageResult, ModelName, OutputFormat
from qwen_image_server.results.local import LocalResultStore
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import NewTask, TaskStatus, utcnow
from qwen_image_server.tasks.sql import SqlTaskStore
from qwen_image_server.worker.maintenance import Maintenance

pytestmark = pytest.mark.anyio
REQUEST = GenerationRequest.create(
    model="qwen-image", prompt="fox", width=256, height=256, num_inference_steps=2, seed=1
)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


async def _finished_task(store: SqlTaskStore, results: LocalResultStore) -> str:
    task = await store.create(NewTask(REQUEST))
    claimed = await store.claim("w1", [ModelName.QWEN_IMAGE], 30)
    assert claimed is not None and claimed.id == task.id
    image = ImageResult(b"png-bytes", OutputFormat.PNG, 256, 256, seed=1, index=0)
    await store.complete(task.id, "w1", [await results.put(task.id, image)])
    return task.id


async def test_old_tasks_and_their_images_are_deleted_and_recent_ones_kept(tmp_path: Path) -> None:
    clock = Clock()
    store = SqlTaskStore.open(f"sqlite:///{tmp_path / 'tasks.db'}", clock=clock)
    results = LocalResultStore(tmp_path / "results")
    await store.start()
    try:
        clock.now = utcnow() - timedelta(days=10)
        old = await _finished_task(store, results)
        clock.now = utcnow()
        recent = await _finished_task(store, results)
        settings = Settings(task_retention_seconds=7 * 86400, result_ttl_seconds=86400)
        deleted_tasks, _ = await Maintenance(settings, store, results).clean_up()
        assert deleted_tasks == 1
        assert [task.id for task in (await store.list_tasks()).tasks] == [recent]
        assert not (tmp_path / "results" / old).exists()
        assert (await results.read(f"{recent}/0.png")) == b"png-bytes"
    finally:
        await store.close()


async def test_images_past_their_ttl_are_deleted_but_the_task_stays(tmp_path: Path) -> None:
    store = SqlTaskStore.open(f"sqlite:///{tmp_path / 'tasks.db'}")
    results = LocalResultStore(tmp_path / "results")
    await store.start()
    try:
        task_id = await _finished_task(store, results)
        two_days_ago = (utcnow() - timedelta(days=2)).timestamp()
        for path in (tmp_path / "results" / task_id).iterdir():
            os.utime(path, (two_days_ago, two_days_ago))
        _, removed = await Maintenance(Settings(result_ttl_seconds=86400), store, results).clean_up()
        assert removed == 1
        assert (await store.get(task_id)).status is TaskStatus.SUCCEEDED
    finally:
        await store.close()


async def test_a_task_whose_worker_went_silent_is_requeued(tmp_path: Path) -> None:
    clock = Clock()
    store = SqlTaskStore.open(f"sqlite:///{tmp_path / 'tasks.db'}", clock=clock)
    await store.start()
    try:
        task = await store.create(NewTask(REQUEST))
        clock.now = utcnow() - timedelta(minutes=5)
        await store.claim("dead-worker", [ModelName.QWEN_IMAGE], lease_seconds=30)
        clock.now = utcnow()
        maintenance = Maintenance(Settings(), store, LocalResultStore(tmp_path / "results"))
        assert await maintenance.rescue_orphans() == 1
        again = await store.get(task.id)
        assert again.status is TaskStatus.QUEUED and again.attempts == 1
        assert await maintenance.rescue_orphans() == 0
    finally:
        await store.close()
