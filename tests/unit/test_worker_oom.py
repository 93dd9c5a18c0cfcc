"""A task whose render runs out of GPU memory fails with a message naming the settings that would
have helped, and the worker goes on with the next task on the same engine (engine/memory.py). The
real tiny pipelines; the first transformer call raises `torch.OutOfMemoryError` as CUDA does."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import TaskStatus
from tests.conftest import TINY_EVERYWHERE
from tests.engine.test_memory import OutOfMemoryOnce
from tests.unit.test_worker_batching import FINAL, _queue, _request, _service, _wait_for

pytestmark = pytest.mark.anyio


async def test_an_out_of_memory_task_fails_naming_the_settings_and_the_worker_takes_the_next(tmp_path: Path) -> None:
    engine = Engine(Settings(**TINY_EVERYWHERE, c2pa=False, invisible_watermark=False))
    engine.pipeline(ModelName.QWEN_IMAGE).transformer.register_forward_pre_hook(OutOfMemoryOnce())
    service = _service(tmp_path, engine, max_batch_size=1)
    ids = await _queue(service, _request("fox", seed=1, steps=2), _request("owl", seed=2, steps=2))
    async with service.running():
        first, second = [await _wait_for(service, task_id, *FINAL, timeout=120) for task_id in ids]
    assert first.status is TaskStatus.FAILED
    assert first.error is not None
    for remedy in ("QWEN_IMAGE_OFFLOAD=", "QWEN_IMAGE_QUANTIZATION=fp8", "QWEN_IMAGE_VAE_TILING=true"):
        assert remedy in first.error.message
    assert second.status is TaskStatus.SUCCEEDED
    assert [image.seed for image in second.results] == [2]
