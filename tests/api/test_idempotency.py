"""Idempotency-Key on create endpoints: the same key and body return the same task."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import TINY_TASK

pytestmark = pytest.mark.anyio
KEY = {"Idempotency-Key": "order-42"}


async def test_the_same_key_and_body_return_the_same_task(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/tasks", json=TINY_TASK, headers=KEY)).json()
    again = (await client.post("/v1/tasks", json=TINY_TASK, headers=KEY)).json()
    assert again["id"] == first["id"]
    assert len((await client.get("/v1/tasks")).json()["data"]) == 1


async def test_the_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    await client.post("/v1/tasks", json=TINY_TASK, headers=KEY)
    reused = await client.post("/v1/tasks", json={**TINY_TASK, "prompt": "a cat"}, headers=KEY)
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


async def test_without_a_key_every_call_creates_a_task(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/tasks", json=TINY_TASK)).json()
    second = (await client.post("/v1/tasks", json=TINY_TASK)).json()
    assert first["id"] != second["id"]


async def test_dialects_honour_the_key_too(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a fox", "size": "256*256"}
    first = (await client.post("/v3/async/qwen-image-txt2img", json=body, headers=KEY)).json()
    again = (await client.post("/v3/async/qwen-image-txt2img", json=body, headers=KEY)).json()
    assert first["task_id"] == again["task_id"]
    native = await client.post("/v1/tasks", json=TINY_TASK, headers=KEY)
    assert native.status_code == 422, "one key, another endpoint: a different request"
