from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio
LIMIT = 4096


@pytest.fixture
async def small_client(tmp_path: Path, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", max_request_bytes=LIMIT)
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service) as client:
        yield client


async def test_a_body_over_the_limit_is_413_in_the_native_shape(small_client: httpx.AsyncClient) -> None:
    response = await small_client.post("/v1/tasks", json={**TINY_TASK, "prompt": "fox " * LIMIT})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_false_content_length_does_not_get_past_it(small_client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1024

    response = await small_client.post("/v1/tasks", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413


async def test_the_error_speaks_the_dialect(small_client: httpx.AsyncClient) -> None:
    response = await small_client.post("/v1/images/generations", json={"prompt": "fox " * LIMIT})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_small_bodies_pass(small_client: httpx.AsyncClient) -> None:
    assert (await small_client.post("/v1/tasks", json=TINY_TASK)).status_code == 202
