from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_healthz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_ready_once_the_worker_has_loaded_the_models(client: httpx.AsyncClient) -> None:
    for _ in range(200):
        response = await client.get("/readyz")
        if response.status_code == 200:
            break
        assert response.status_code == 503 and response.json()["status"] == "loading"
        await asyncio.sleep(0.05)
    assert response.json() == {"status": "ready", "waiting_for": [], "problems": []}
    models = (await client.get("/v1/models")).json()["data"]
    assert {model["id"]: model["ready"] for model in models} == {
        "qwen-image": True,
        "qwen-image-edit": True,
        "qwen-image-edit-plus": True,
    }
    assert {model["id"]: model["max_input_images"] for model in models}["qwen-image-edit-plus"] == 3


async def test_the_api_reference_is_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/tasks" in spec["paths"] and "/v1/tasks/{task_id}/events" in spec["paths"]
