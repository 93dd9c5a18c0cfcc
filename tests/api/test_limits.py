"""Limits: tasks per minute and unfinished tasks per key (429), queue depth (503), with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(
    tmp_path: Path, engine: Engine, *, worker: bool = False, **limits: Any
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", **limits)
    service = Service.build(settings, engine=engine, run_worker=worker)
    async with service.running(), asgi_client(service) as client:
        yield service, client


async def test_tasks_per_minute_are_limited_with_retry_after(tmp_path: Path, engine: Engine) -> None:
    async with serving(tmp_path, engine, tasks_per_minute=3) as (_, client):
        for _ in range(3):
            assert (await client.post("/v1/tasks", json=TINY_TASK)).status_code == 202
        refused = await client.post("/v1/tasks", json=TINY_TASK)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) > 0
        dashscope = await client.post(
            "/api/v1/services/aigc/text2image/image-synthesis",
            json={"model": "qwen-image", "input": {"prompt": "fox"}},
            headers={"X-DashScope-Async": "enable"},
        )
        assert dashscope.status_code == 429 and dashscope.json()["code"] == "Throttling"
        assert "retry-after" in dashscope.headers


async def test_an_idempotent_replay_is_not_refused_by_the_limits(tmp_path: Path, engine: Engine) -> None:
    """A replay creates nothing, so a key at its tasks_per_minute still gets its task back."""
    async with serving(tmp_path, engine, tasks_per_minute=1, active_tasks_per_key=1) as (_, client):
        once = {"Idempotency-Key": "order-17"}
        first = await client.post("/v1/tasks", json=TINY_TASK, headers=once)
        assert first.status_code == 202
        assert (await client.post("/v1/tasks", json=TINY_TASK)).status_code == 429, "a new task is refused"
        again = await client.post("/v1/tasks", json=TINY_TASK, headers=once)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]


async def test_unfinished_tasks_per_key(tmp_path: Path, engine: Engine) -> None:
    async with serving(tmp_path, engine, active_tasks_per_key=1) as (service, client):
        _, alice = await service.keys.create("alice")
        _, bob = await service.keys.create("bob")
        as_alice = {"Authorization": f"Bearer {alice}"}
        assert (await client.post("/v1/tasks", json=TINY_TASK, headers=as_alice)).status_code == 202
        assert (await client.post("/v1/tasks", json=TINY_TASK, headers=as_alice)).status_code == 429
        as_bob = {"Authorization": f"Bearer {bob}"}
        assert (await client.post("/v1/tasks", json=TINY_TASK, headers=as_bob)).status_code == 202


async def test_a_full_queue_answers_503_and_nothing_is_lost(tmp_path: Path, engine: Engine) -> None:
    async with serving(tmp_path, engine, max_queue_depth=2) as (_, client):
        accepted = [(await client.post("/v1/tasks", json=TINY_TASK)).status_code for _ in range(2)]
        refused = await client.post("/v1/tasks", json=TINY_TASK)
        assert accepted == [202, 202]
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) > 0
        assert len((await client.get("/v1/tasks")).json()["data"]) == 2
