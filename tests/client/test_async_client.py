"""The async client against a live server: the same calls as the sync one, awaited."""

from __future__ import annotations

import asyncio

import pytest

from qwen_image_server.client import AsyncClient, Finished, Running, TaskFailed
from tests.client.conftest import FAST
from tests.conftest import LiveServer, picture_bytes

pytestmark = pytest.mark.anyio


async def test_generate_and_edit_concurrently(live_server: LiveServer) -> None:
    async with AsyncClient(live_server.url) as client:
        made, edited = await asyncio.gather(
            client.generate("a red fox", seed=11, n=2, **FAST),
            client.edit("make it blue", [picture_bytes((64, 64))], seed=5, **FAST),
        )
    assert made.seeds == [11, 12] and all(image.content.startswith(b"\x89PNG") for image in made.images)
    assert edited.task.model == "qwen-image-edit" and edited.seeds == [5]


async def test_stream_wait_and_cancel(live_server: LiveServer) -> None:
    async with AsyncClient(live_server.url) as client:
        task = await client.submit("a fox at dawn", size="256x256", steps=3)
        events = [event async for event in client.stream(task.id)]
        assert isinstance(events[-1], Finished) and events[-1].task.status == "succeeded"
        assert any(isinstance(event, Running) and event.progress.total == 3 for event in events)
        assert (await client.wait(task.id, timeout=5)).status == "succeeded"

        slow = await client.submit("a slow fox", size="256x256", steps=250)
        await client.cancel(slow.id)
        ended = await client.wait(slow.id, timeout=60)
        with pytest.raises(TaskFailed) as failed:  # TaskCanceled is a TaskFailed
            await client.result(ended)
        assert failed.value.task.status == "canceled"
