"""A wrong method gets 405 with an `Allow` header naming every method the path serves (RFC 9110),
in each dialect, on paths with and without parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(tmp_path: Path, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data")
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/tasks", "GET, POST"),  # two routes share the path
        ("DELETE", "/v1/tasks/task-123", "GET"),
        ("GET", "/v1/tasks/task-123/cancel", "POST"),
        ("OPTIONS", "/v1/tasks/task-123/events", "GET"),
        ("PUT", "/v1/images/generations", "POST"),
        ("GET", "/v1/images/edits", "POST"),
        ("DELETE", "/api/v1/tasks/task-123", "GET"),
        ("GET", "/api/v1/services/aigc/text2image/image-synthesis", "POST"),
        ("GET", "/v3/async/qwen-image-txt2img", "POST"),
        ("POST", "/v3/async/task-result", "GET"),
        ("GET", "/api/task/create", "POST"),
        ("PATCH", "/v1/results/task-123/0.png", "GET, HEAD"),
    ],
)
async def test_405_names_the_allowed_methods(api: httpx.AsyncClient, method: str, path: str, allowed: str) -> None:
    response = await api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


async def test_kie_keeps_its_200_envelope_and_still_says_what_is_allowed(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/jobs/createTask")
    assert response.status_code == 200
    assert response.headers["allow"] == "POST"
