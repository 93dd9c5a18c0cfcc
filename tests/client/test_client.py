"""The sync client against a live server (uvicorn in a thread, the tiny model): generate, edit, the
task calls, events, errors and idempotent creates."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from qwen_image_server.client import (
    APIError,
    Client,
    Finished,
    NotFound,
    Preview,
    Queued,
    Running,
    TaskCanceled,
    WaitTimeout,
)
from tests.client.conftest import FAST
from tests.conftest import LiveServer, picture_bytes

SLOW = {"size": "256x256", "steps": 250}  # long enough to cancel on the tiny model


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, api_key="") as client:
        yield client


def test_generate_returns_the_images_with_their_seeds(client: Client, tmp_path: Path) -> None:
    result = client.generate("a red fox in snow", seed=7, n=2, format="webp", **FAST)
    assert result.status == "succeeded" and result.task.model == "qwen-image"
    assert result.seeds == [7, 8]
    assert [image.seed for image in result.task.results] == [7, 8]
    first = result.images[0]
    assert (first.width, first.height, first.content_type) == (256, 256, "image/webp")
    saved = first.save(tmp_path / "fox.webp")
    with Image.open(saved) as picture:
        assert picture.size == (256, 256)
    with first.to_pil() as picture:
        assert picture.format == "WEBP"
    assert result.report is not None and [note.seed for note in result.report.images] == [7, 8]


def test_edit_uploads_the_image(client: Client) -> None:
    edited = client.edit("make it blue", picture_bytes((96, 64)), seed=3, **FAST)
    assert edited.task.model == "qwen-image-edit" and edited.task.request["input_images"] == 1
    with Image.open(io.BytesIO(edited.images[0].content)) as picture:
        assert picture.size == (256, 256)


def test_input_images_may_be_paths_or_pil_images(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(picture_bytes((64, 64)))
    from_path = client.generate("a red fox", image=path, strength=0.5, seed=1, **FAST)
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    from_pil = client.generate("a red fox", image=picture, strength=0.5, seed=1, **FAST)
    for result in (from_path, from_pil):
        assert result.task.request["input_images"] == 1 and result.task.request["strength"] == 0.5


def test_submit_get_wait_and_cancel(client: Client) -> None:
    slow = client.submit("a slow fox", **SLOW)
    queued = client.submit("a queued fox", **FAST)
    assert queued.status == "queued" and client.get(queued.id).id == queued.id

    with pytest.raises(WaitTimeout) as timed_out:
        client.wait(slow.id, timeout=0.3)
    assert timed_out.value.task.status in ("queued", "running")

    assert client.cancel(queued.id).status == "canceled"
    ended = client.wait(queued.id, timeout=30)
    assert ended.status == "canceled"
    with pytest.raises(TaskCanceled) as canceled:
        client.result(ended)
    assert canceled.value.task.id == queued.id

    client.cancel(slow.id)
    assert client.wait(slow.id, timeout=60).status == "canceled"
    with pytest.raises(APIError) as conflict:
        client.cancel(slow.id)
    assert (conflict.value.status, conflict.value.code) == (409, "task_conflict")


def test_stream_yields_progress_previews_then_the_final_task(client: Client) -> None:
    task = client.submit("a fox at dawn", size="256x256", steps=4, partial_images=1)
    events = list(client.stream(task.id))
    assert isinstance(events[-1], Finished) and events[-1].task.status == "succeeded"
    assert all(not isinstance(event, Finished) for event in events[:-1])
    steps = [event.progress for event in events if isinstance(event, Running)]
    assert steps and all(progress.total == 4 for progress in steps)
    assert [progress.step for progress in steps] == sorted(progress.step for progress in steps)
    assert {type(event) for event in events} <= {Queued, Running, Preview, Finished}
    [preview] = [event for event in events if isinstance(event, Preview)]
    assert preview.image.partial_index == 0
    assert client.download(preview.image).startswith(b"\x89PNG")
    again = list(client.stream(task.id))  # an ended task's stream: its previews, then its final state
    assert again[-1] == events[-1] and len(again) == 2


def test_bad_requests_raise_the_servers_error(client: Client) -> None:
    with pytest.raises(APIError) as too_big:
        client.generate("fox", size="4096x4096", steps=2)
    error = too_big.value
    assert (error.status, error.code, error.param) == (400, "invalid_parameter", "width")
    assert "2048" in error.message
    with pytest.raises(NotFound) as missing:
        client.get("task_nothing")
    assert missing.value.code == "task_not_found"


def test_the_same_idempotency_key_gets_the_same_task(client: Client) -> None:
    first = client.submit("one fox", idempotency_key="client-test-1", **FAST)
    again = client.submit("one fox", idempotency_key="client-test-1", **FAST)
    assert again.id == first.id
    with pytest.raises(APIError) as reused:
        client.submit("another fox", idempotency_key="client-test-1", **FAST)
    assert reused.value.code == "idempotency_key_reused"
    assert client.wait(first.id, timeout=60).status == "succeeded"
