"""The app in-process over ASGI, on a real service: SQLite task store, local results, and a worker
running the real pipelines with the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE, asgi_client

FAST_SERVICE = {
    "models": tuple(ModelName),
    "lease_seconds": 5.0,
    "progress_interval_seconds": 0.05,
    "poll_interval_seconds": 0.05,
    "drain_seconds": 1.0,
}


@pytest.fixture
async def service(tmp_path: Path, engine: Engine) -> AsyncIterator[Service]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data")
    service = Service.build(settings, engine=engine, run_worker=True)
    async with service.running():
        yield service


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(service) as client:
        yield client


@pytest.fixture
async def api_service(tmp_path: Path, engine: Engine) -> AsyncIterator[Service]:
    """The service without a worker: tasks stay queued, only the HTTP layer and the stores run."""
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data")
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running():
        yield service


@pytest.fixture
async def api(api_service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `api_service`."""
    async with asgi_client(api_service) as client:
        yield client


TINY_TASK: dict[str, Any] = {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256",
                             "num_inference_steps": 2, "seed": 7}  # fmt: skip


async def wait_until(client: httpx.AsyncClient, task_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the task until its status is one of `statuses`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/v1/tasks/{task_id}")).json()
        if body["status"] in statuses:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"task stuck in {body['status']}"
        await asyncio.sleep(0.05)
