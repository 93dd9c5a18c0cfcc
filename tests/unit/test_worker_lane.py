"""The worker's engine lane: the next task is claimed during the last step of the current one and
starts when it ends; a draining worker hands a task that has not started back at once.

A real SQLite store and result folder; the engine is bench/fake_engine.py's stand-in, whose steps
take a fixed time, so the order of events does not depend on the machine's speed."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench.fake_engine import InstantEngine

from qwen_image_server.domain import BatchEntry, GenerationRequest, ImageResult, ModelName, RenderedImage
from qwen_image_server.errors import QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import NewTask, Task, TaskStatus

pytestmark = pytest.mark.anyio
STEP_SECONDS = 0.1


def _request(seed: int, steps: int) -> GenerationRequest:
    return GenerationRequest.create(
        model="qwen-image", prompt="fox", width=256, height=256, num_inference_steps=steps, seed=seed
    )


def _service(tmp_path: Path, engine: InstantEngine | None = None) -> Service:
    settings = Settings(
        data_dir=tmp_path / "data", models=(ModelName.QWEN_IMAGE,), progress_interval_seconds=0.05,
        poll_interval_seconds=0.05, drain_seconds=10.0,
    )  # fmt: skip
    engine = engine or InstantEngine(step_seconds=STEP_SECONDS)
    return Service.build(settings, engine=engine, run_worker=True)


async def _wait_for(service: Service, task_id: str, *statuses: TaskStatus, timeout: float = 30) -> Task:
    deadline = asyncio.get_running_loop().time() + timeout
    while (task := await service.store.get(task_id)).status not in statuses:
        assert asyncio.get_running_loop().time() < deadline, f"task {task_id} stuck in {task.status}"
        await asyncio.sleep(0.02)
    return task


async def test_the_next_task_is_claimed_before_the_current_one_completes(tmp_path: Path) -> None:
    service = _service(tmp_path)
    await service.store.start()
    ids = [(await service.store.create(NewTask(_request(seed, steps=3)))).id for seed in range(4)]
    async with service.running():
        tasks = [await _wait_for(service, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED) for task_id in ids]
    assert {(task.status, task.attempts) for task in tasks} == {(TaskStatus.SUCCEEDED, 1)}
    for current, following in itertools.pairwise(tasks):
        assert current.started_at and current.finished_at and following.started_at
        # Claimed while the current task ran its last step, not after its completion write.
        assert following.started_at < current.finished_at


async def test_a_draining_worker_hands_back_a_task_that_has_not_started(tmp_path: Path) -> None:
    service = _service(tmp_path)
    await service.store.start()
    first = await service.store.create(NewTask(_request(1, steps=10)))
    second = await service.store.create(NewTask(_request(2, steps=10)))
    async with service.running():
        await _wait_for(service, second.id, TaskStatus.RUNNING)  # claimed in the first's last step
        assert service.worker is not None
        service.worker.stop()
        released = await _wait_for(service, second.id, TaskStatus.QUEUED, timeout=1)
        assert (await service.store.get(first.id)).status is TaskStatus.RUNNING, "released before the first ended"
        finished = await _wait_for(service, first.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    assert finished.status is TaskStatus.SUCCEEDED, "the running task had its drain time"
    assert released.attempts == 0, "a withdrawn claim is not counted as an attempt"


class GatedEncodingEngine(InstantEngine):
    """The first task's image finishes encoding only once the second task has started rendering:
    if the worker encoded in the gap between the two (on the engine's thread, or before handing
    over), the second would never start and the encoding would give up waiting."""

    def __init__(self) -> None:
        super().__init__(step_seconds=0.02)
        self.second_started = threading.Event()
        self.threads: dict[str, str] = {}  # what ran -> the thread it ran on
        self.overlapped: bool | None = None

    def render_batch(self, entries: Sequence[BatchEntry]) -> list[Sequence[RenderedImage] | QwenImageError]:
        [entry] = entries  # max_batch_size is 1
        seed = entry.request.seed
        self.threads[f"render {seed}"] = threading.current_thread().name
        if seed == 2:
            self.second_started.set()
        [rendered] = super().render_batch(entries)
        if seed != 1 or isinstance(rendered, QwenImageError):
            return [rendered]
        return [[_Gated(self, image) for image in rendered]]


@dataclass
class _Gated:
    engine: GatedEncodingEngine
    image: RenderedImage

    def encode(self) -> ImageResult:
        self.engine.threads["encode 1"] = threading.current_thread().name
        self.engine.overlapped = self.engine.second_started.wait(timeout=10)
        return self.image.encode()


async def test_images_are_encoded_off_the_engine_while_the_next_task_renders(tmp_path: Path) -> None:
    engine = GatedEncodingEngine()
    service = _service(tmp_path, engine)
    await service.store.start()
    ids = [(await service.store.create(NewTask(_request(seed, steps=3)))).id for seed in (1, 2)]
    async with service.running():
        tasks = [await _wait_for(service, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED) for task_id in ids]
    assert [task.status for task in tasks] == [TaskStatus.SUCCEEDED] * 2
    assert engine.overlapped is True, "the second task started only after the first one's images were encoded"
    assert engine.threads["encode 1"] != engine.threads["render 1"] == engine.threads["render 2"]
    assert [image.seed for image in tasks[0].results] == [1]
