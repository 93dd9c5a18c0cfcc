"""/readyz waits for the warm-up: a worker with the real tiny engine is `warming` (and the service
not ready) while its warm-up generation runs, and ready only once it has finished."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio
ONE_MODEL = {**TINY_EVERYWHERE, "models": (ModelName.QWEN_IMAGE,), "warmup_sizes": ("256x256",)}


async def _until(check: Any, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_readyz_answers_200_only_after_the_warm_up(tmp_path: Path) -> None:
    engine = Engine(Settings(**ONE_MODEL))
    transformer = (await asyncio.to_thread(engine.pipeline, ModelName.QWEN_IMAGE)).transformer
    release, forwards = threading.Event(), []

    def hold(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        forwards.append(kwargs["hidden_states"].shape[1])
        release.wait(timeout=60)  # the warm-up's transformer waits here until the test has looked

    handle = transformer.register_forward_pre_hook(hold, with_kwargs=True)
    service = Service.build(
        Settings(**{**FAST_SERVICE, **ONE_MODEL}, data_dir=tmp_path / "data"), engine=engine, run_worker=True
    )
    try:
        async with service.running(), asgi_client(service) as client:

            async def warming() -> bool:
                return bool(forwards)

            await _until(warming)
            assert [worker.state for worker in await service.live_workers()] == ["warming"]
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"status": "loading", "waiting_for": ["qwen-image"], "problems": []}
            release.set()

            async def ready() -> bool:
                response: httpx.Response = await client.get("/readyz")
                return response.status_code == 200

            await _until(ready)
            assert [worker.state for worker in await service.live_workers()] == ["ready"]
            assert set(forwards) == {256}, "the warm-up generated at 256x256"
    finally:
        release.set()
        handle.remove()
