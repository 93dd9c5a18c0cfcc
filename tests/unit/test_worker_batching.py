"""The worker's batches: queued tasks that can share one engine call (the same batch key) are claimed
together up to `max_batch_size` and run as one `render_batch` call, each task with its own progress,
results, cancel and end.

A real SQLite store and result folder. Most tests use bench/fake_engine.py's stand-in, which steps
the compatible entries of a call together (fixed step times, so the order of events does not depend
on the machine's speed); the last one runs the real pipelines with the tiny model and checks that a
task's pixels do not depend on the batch it ran in."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench.fake_engine import InstantEngine
from PIL import Image

from qwen_image_server.domain import BatchEntry, GenerationRequest, ModelName, RenderedImage
from qwen_image_server.engine import Engine
from qwen_image_server.errors import QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import NewTask, Progress, Task, TaskStatus
from qwen_image_server.worker.worker import GenerationEngine, Outcome
from tests.conftest import TINY_EVERYWHERE

pytestmark = pytest.mark.anyio
FINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


class RecordingEngine(InstantEngine):
    """The stand-in engine, noting the prompts of every `render_batch` call."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        super().__init__(step_seconds)
        self.calls: list[list[str]] = []

    def render_batch(self, entries: Sequence[BatchEntry]) -> list[Sequence[RenderedImage] | QwenImageError]:
        self.calls.append([entry.request.prompt for entry in entries])
        return super().render_batch(entries)


def _request(prompt: str, *, seed: int = 1, steps: int = 3, cfg: bool = True, images: int = 1) -> GenerationRequest:
    return GenerationRequest.create(
        model="qwen-image", prompt=prompt, width=256, height=256, num_inference_steps=steps, seed=seed,
        true_cfg_scale=4.0 if cfg else 1.0, num_images_per_prompt=images,
    )  # fmt: skip


def _service(tmp_path: Path, engine: GenerationEngine, *, max_batch_size: int, **overrides: Any) -> Service:
    settings = Settings(
        **{**TINY_EVERYWHERE, "data_dir": tmp_path / "data", "models": (ModelName.QWEN_IMAGE,),
           "progress_interval_seconds": 0.05, "poll_interval_seconds": 0.05, "drain_seconds": 10.0,
           "max_batch_size": max_batch_size, **overrides},
    )  # fmt: skip
    return Service.build(settings, engine=engine, run_worker=True)


async def _queue(service: Service, *requests: GenerationRequest) -> list[str]:
    """Queue the tasks (the store is started first, so they wait for the worker)."""
    await service.store.start()
    return [(await service.store.create(NewTask(request))).id for request in requests]


async def _wait_for(service: Service, task_id: str, *statuses: TaskStatus, timeout: float = 30) -> Task:
    return await _wait_until(service, task_id, lambda task: task.status in statuses, timeout)


async def _wait_until(service: Service, task_id: str, condition: Callable[[Task], bool], timeout: float = 30) -> Task:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition(task := await service.store.get(task_id)):
        assert asyncio.get_running_loop().time() < deadline, f"task {task_id} stuck in {task.status}, {task.progress}"
        await asyncio.sleep(0.02)
    return task


async def test_compatible_tasks_queued_before_the_worker_starts_run_as_one_call(tmp_path: Path) -> None:
    engine = RecordingEngine()
    service = _service(tmp_path, engine, max_batch_size=4)
    ids = await _queue(
        service,
        _request("fox", seed=10, images=2),
        _request("owl without cfg", seed=20, cfg=False),
        _request("cat", seed=30),
        _request("fox again", seed=40),
    )
    async with service.running():
        tasks = [await _wait_for(service, task_id, *FINAL) for task_id in ids]
    assert engine.calls == [["fox", "cat", "fox again"], ["owl without cfg"]]
    assert [task.status for task in tasks] == [TaskStatus.SUCCEEDED] * 4
    # Each task its own progress and results, though three of them ran in one call.
    assert [task.progress for task in tasks] == [Progress(6, 6), Progress(3, 3), Progress(3, 3), Progress(3, 3)]
    assert [[image.seed for image in task.results] for task in tasks] == [[10, 11], [20], [30], [40]]
    assert len({image.key for task in tasks for image in task.results}) == 5


async def test_max_batch_size_one_runs_one_task_per_call(tmp_path: Path) -> None:
    engine = RecordingEngine()
    service = _service(tmp_path, engine, max_batch_size=1)
    ids = await _queue(service, *(_request(prompt) for prompt in ("fox", "cat", "owl")))
    async with service.running():
        tasks = [await _wait_for(service, task_id, *FINAL) for task_id in ids]
    assert engine.calls == [["fox"], ["cat"], ["owl"]]
    assert [task.status for task in tasks] == [TaskStatus.SUCCEEDED] * 3


async def test_a_batch_is_limited_to_max_batch_size(tmp_path: Path) -> None:
    engine = RecordingEngine()
    service = _service(tmp_path, engine, max_batch_size=2)
    ids = await _queue(service, *(_request(prompt) for prompt in ("a", "b", "c", "d", "e")))
    async with service.running():
        [await _wait_for(service, task_id, *FINAL) for task_id in ids]
    assert engine.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_cancel_of_one_task_in_a_running_batch_stops_it_alone(tmp_path: Path) -> None:
    engine = RecordingEngine(step_seconds=0.05)
    service = _service(tmp_path, engine, max_batch_size=3)
    first, canceled, last = await _queue(service, *(_request(p, steps=20) for p in ("fox", "cat", "owl")))
    async with service.running():
        await _wait_until(service, canceled, lambda task: task.progress.step >= 3)  # under way, with the others
        await service.store.request_cancel(canceled)
        tasks = [await _wait_for(service, task_id, *FINAL) for task_id in (first, canceled, last)]
    assert engine.calls == [["fox", "cat", "owl"]]
    assert [task.status for task in tasks] == [TaskStatus.SUCCEEDED, TaskStatus.CANCELED, TaskStatus.SUCCEEDED]
    assert tasks[1].results == () and tasks[1].progress.step < 20
    assert [task.progress for task in (tasks[0], tasks[2])] == [Progress(20, 20)] * 2


async def test_a_draining_worker_hands_back_every_task_of_a_batch_that_has_not_started(tmp_path: Path) -> None:
    engine = RecordingEngine(step_seconds=0.1)
    service = _service(tmp_path, engine, max_batch_size=3)
    running, *waiting = await _queue(
        service, _request("alone", steps=10, cfg=False), _request("fox", steps=10), _request("cat", steps=10)
    )
    async with service.running():
        for task_id in waiting:  # claimed together in the first task's last step
            await _wait_for(service, task_id, TaskStatus.RUNNING)
        assert service.worker is not None
        service.worker.stop()
        released = [await _wait_for(service, task_id, TaskStatus.QUEUED, timeout=1) for task_id in waiting]
        assert (await service.store.get(running)).status is TaskStatus.RUNNING, "released before the first ended"
        finished = await _wait_for(service, running, *FINAL)
    assert finished.status is TaskStatus.SUCCEEDED
    assert [task.attempts for task in released] == [0, 0], "a withdrawn claim is not counted as an attempt"
    assert engine.calls == [["alone"]]


async def test_the_drain_deadline_stops_every_task_of_the_running_batch(tmp_path: Path) -> None:
    engine = RecordingEngine(step_seconds=0.05)
    service = _service(tmp_path, engine, max_batch_size=2, drain_seconds=0.2)
    ids = await _queue(service, _request("fox", steps=200), _request("cat", steps=200))
    async with service.running():
        for task_id in ids:
            await _wait_for(service, task_id, TaskStatus.RUNNING)
        assert service.worker is not None
        service.worker.stop()
        released = [await _wait_for(service, task_id, TaskStatus.QUEUED, timeout=5) for task_id in ids]
    assert [task.attempts for task in released] == [0, 0]
    assert engine.calls == [["fox", "cat"]]


# -- the real pipelines ---------------------------------------------------------------------------------


class BatchSizes:
    """The tiny engine, noting how many entries each `render_batch` call had."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def render_batch(self, entries: Sequence[BatchEntry]) -> Sequence[Outcome]:
        self.sizes.append(len(entries))
        return self.engine.render_batch(entries)


@pytest.fixture(scope="module")
def batching_engine() -> Iterator[Engine]:
    """The tiny engine allowed batches of three (an engine may size its calls by the setting too)."""
    yield Engine(Settings(**TINY_EVERYWHERE, max_batch_size=3))


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255


async def _run_all(tmp_path: Path, engine: BatchSizes, requests: list[GenerationRequest], batch: int) -> list[Any]:
    service = _service(tmp_path, engine, max_batch_size=batch, lease_seconds=60.0)  # type: ignore[arg-type]
    ids = await _queue(service, *requests)
    async with service.running():
        tasks = [await _wait_for(service, task_id, *FINAL, timeout=300) for task_id in ids]
        assert [task.status for task in tasks] == [TaskStatus.SUCCEEDED] * len(tasks)
        return [_pixels(await service.results.read(task.results[0].key)) for task in tasks]


async def test_a_task_batched_with_others_makes_the_pixels_it_makes_alone(
    tmp_path: Path, batching_engine: Engine
) -> None:
    prompts = ["a red fox", "a small grey owl on a branch at night", "cat"]  # different lengths: padded rows
    requests = [_request(prompt, seed=5 + n, steps=2, cfg=False) for n, prompt in enumerate(prompts)]
    engine = BatchSizes(batching_engine)
    batched = await _run_all(tmp_path / "batched", engine, requests, batch=3)
    assert engine.sizes == [3]
    alone = await _run_all(tmp_path / "alone", engine, requests, batch=1)
    assert engine.sizes == [3, 1, 1, 1]
    for together, by_itself in zip(batched, alone, strict=True):
        # Batched rows round their matrix products differently: the latents agree to ~2e-6
        # (tests/engine/test_batching.py), the 8-bit pixels to one level at most.
        np.testing.assert_allclose(together, by_itself, rtol=0, atol=1 / 255 + 1e-9)
    assert not np.array_equal(batched[0], batched[1]), "each task got its own picture"
