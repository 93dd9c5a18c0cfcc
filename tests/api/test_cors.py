"""CORS: off by default; with `cors_allowed_origins`, browsers on those origins can call the API
(preflights answered, key headers let through, useful response headers exposed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from qwen_image_server.api.fal import routes as fal_routes
from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio
ORIGIN = "https://app.example.com"
PIXAZO = "/qwen-image/v1/generateMultimodeTextToImageRequest"
# The X-Fal-* headers the fal dialect reads (applied, or reported as not applied)
FAL_HEADERS = tuple(name.lower() for name in (fal_routes.PRIORITY_HEADER, *fal_routes.UNUSED_HEADERS))


async def _client(tmp_path: Path, engine: Engine, origins: tuple[str, ...]) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", cors_allowed_origins=origins)
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service) as client:
        yield client


@pytest.fixture
async def cors(tmp_path: Path, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(tmp_path, engine, (ORIGIN,)):
        yield client


@pytest.fixture
async def no_cors(tmp_path: Path, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(tmp_path, engine, ()):
        yield client


def preflight(method: str, *headers: str, origin: str = ORIGIN) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": ", ".join(headers),
    }


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        (PIXAZO, "POST", ("content-type", "cache-control", "ocp-apim-subscription-key")),  # Pixazo's own example
        ("/v1/tasks", "POST", ("authorization", "content-type", "idempotency-key", "prefer")),
        ("/v1/images/generations", "POST", ("authorization", "content-type")),
        ("/api/v1/services/aigc/text2image/image-synthesis", "POST", ("authorization", "x-dashscope-async")),
        ("/api/v1/tasks/task_0123", "GET", ("authorization",)),
        ("/api/task/create", "POST", ("api-key", "content-type")),
        ("/v1/results/task_0123/0.png", "GET", ("range", "if-range")),
        # fal-client: submit with its priority and timeout headers, cancel with PUT
        ("/fal-ai/qwen-image", "POST", ("authorization", "content-type", *FAL_HEADERS)),
        ("/fal-ai/qwen-image/requests/task_0123/cancel", "PUT", ("authorization",)),
        ("/run/fal-ai/qwen-image", "POST", ("authorization", "content-type", "x-fal-request-timeout")),
        ("/v1/models/qwen/qwen-image/predictions", "POST", ("authorization", "content-type", "prefer")),
    ],
)
async def test_a_preflight_from_an_allowed_origin_is_answered(
    cors: httpx.AsyncClient, path: str, method: str, headers: tuple[str, ...]
) -> None:
    response = await cors.options(path, headers=preflight(method, *headers))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert method in response.headers["access-control-allow-methods"]
    allowed = {name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")}
    assert set(headers) <= allowed


async def test_a_preflight_from_another_origin_is_not(cors: httpx.AsyncClient) -> None:
    response = await cors.options(PIXAZO, headers=preflight("POST", "content-type", origin="https://evil.example"))
    assert response.status_code != 200
    assert "access-control-allow-origin" not in response.headers


async def test_a_header_no_dialect_reads_is_not_let_through(cors: httpx.AsyncClient) -> None:
    response = await cors.options("/v1/tasks", headers=preflight("POST", "x-something-else"))
    assert response.status_code != 200


async def test_answers_to_an_allowed_origin_expose_the_useful_headers(cors: httpx.AsyncClient) -> None:
    response = await cors.post("/v1/tasks", json=TINY_TASK, headers={"Origin": ORIGIN})
    assert response.status_code == 202
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"location", "retry-after", "etag", "content-range"} <= exposed


async def test_fals_error_type_is_exposed(cors: httpx.AsyncClient) -> None:
    # fal-client reads X-Fal-Error-Type when the body has no error_type; a page must be able to too
    response = await cors.get("/fal-ai/qwen-image/requests/task_0123/status", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert "x-fal-error-type" in exposed


async def test_errors_carry_the_cors_headers_too(cors: httpx.AsyncClient) -> None:
    response = await cors.post("/v1/tasks", json={"prompt": 5}, headers={"Origin": ORIGIN})
    assert response.status_code == 400  # readable by the page, so it can show why
    assert response.headers["access-control-allow-origin"] == ORIGIN


async def test_off_by_default(no_cors: httpx.AsyncClient) -> None:
    response = await no_cors.options(PIXAZO, headers=preflight("POST", "content-type"))
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers
    answer = await no_cors.post("/v1/tasks", json=TINY_TASK, headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in answer.headers
