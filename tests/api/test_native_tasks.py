"""The native /v1/tasks API end to end through the real pipelines (tiny model)."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from qwen_image_server.service import Service
from tests.api.conftest import TINY_TASK, wait_until
from tests.conftest import picture_bytes

pytestmark = pytest.mark.anyio


async def download(client: httpx.AsyncClient, url: str) -> httpx.Response:
    parts = urlsplit(url)
    return await client.get(f"{parts.path}?{parts.query}")


def picture(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


async def run_task(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/tasks", json={**TINY_TASK, **fields})
    assert response.status_code == 202, response.text
    return await wait_until(client, response.json()["id"], "succeeded", "failed", "canceled")


async def test_a_task_succeeds_with_image_urls_of_the_asked_size(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/tasks", json={**TINY_TASK, "size": "320x256"})
    assert created.status_code == 202
    assert created.headers["location"] == f"/v1/tasks/{created.json()['id']}"
    assert created.json()["status"] in ("queued", "running", "succeeded")
    task = await wait_until(client, created.json()["id"], "succeeded")
    assert task["progress"] == {"step": 2, "total": 2, "percent": 100.0}
    assert task["attempts"] == 1 and task["started_at"] and task["finished_at"]
    [result] = task["results"]
    assert result["seed"] == 7 and result["content_type"] == "image/png"
    image = await download(client, result["url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert picture(image.content).size == (320, 256) == (result["width"], result["height"])


async def test_width_and_height_off_the_16_pixel_grid_come_back_exactly(client: httpx.AsyncClient) -> None:
    task = await run_task(client, size=None, width=261, height=259, partial_images=1)
    assert task["status"] == "succeeded", task["error"]
    [result], [preview] = task["results"], task["previews"]
    for made in (result, preview):
        assert (made["width"], made["height"]) == (261, 259)
        assert picture((await download(client, made["url"])).content).size == (261, 259)


async def test_the_same_seed_gives_the_same_pixels(client: httpx.AsyncClient) -> None:
    first, second = await asyncio.gather(run_task(client), run_task(client))
    other = await run_task(client, seed=8)
    pixels = []
    for task in (first, second, other):
        data = (await download(client, task["results"][0]["url"])).content
        pixels.append(np.asarray(picture(data).convert("RGB")))
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


async def test_each_acceleration_level_runs_and_is_echoed(client: httpx.AsyncClient) -> None:
    for level in ("none", "regular", "high"):
        task = await run_task(client, acceleration=level, num_inference_steps=4)
        assert task["status"] == "succeeded", task["error"]
        assert task["request"]["acceleration"] == level
        assert len(task["results"]) == 1


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_lossy_formats(client: httpx.AsyncClient, fmt: str, pil_format: str) -> None:
    task = await run_task(client, output_format=fmt)
    image = await download(client, task["results"][0]["url"])
    assert image.headers["content-type"] == f"image/{fmt}"
    assert picture(image.content).format == pil_format


async def test_several_images_each_with_its_seed(client: httpx.AsyncClient) -> None:
    task = await run_task(client, n=2, seed=20)
    assert [result["seed"] for result in task["results"]] == [20, 21]
    assert task["progress"]["total"] == 2, "the images are made together: the steps of one call"


@pytest.mark.parametrize("how", ["query", "prefer"])
async def test_waiting_returns_the_finished_task(client: httpx.AsyncClient, how: str) -> None:
    if how == "query":
        response = await client.post("/v1/tasks?wait=60", json=TINY_TASK)
    else:
        response = await client.post("/v1/tasks", json=TINY_TASK, headers={"Prefer": "wait=60"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


async def test_a_short_wait_answers_202_with_the_current_state(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/tasks?wait=0.01", json={**TINY_TASK, "num_inference_steps": 30})
    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "running")


async def test_edit_with_a_base64_image_and_edit_plus_with_two(client: httpx.AsyncClient) -> None:
    png = picture_bytes((96, 96))
    one = await run_task(client, model="qwen-image-edit", images=[base64.b64encode(png).decode()])
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    two = await run_task(client, model="qwen-image-edit-plus", images=[uri, uri])
    assert one["status"] == two["status"] == "succeeded"
    assert one["request"]["input_images"] == 1 and two["request"]["input_images"] == 2


async def test_image_to_image_with_strength_runs_the_steps_it_asks(client: httpx.AsyncClient) -> None:
    png = base64.b64encode(picture_bytes((96, 64))).decode()
    task = await run_task(client, images=[png], strength=0.5, num_inference_steps=4, size="256x256")
    assert task["status"] == "succeeded", task["error"]
    assert task["progress"] == {"step": 2, "total": 2, "percent": 100.0}  # 0.5 x 4 steps
    assert task["request"]["input_images"] == 1 and task["request"]["strength"] == 0.5
    [result] = task["results"]
    assert picture((await download(client, result["url"])).content).size == (256, 256)
    default = await run_task(client, images=[png], size="256x256")
    assert default["request"]["strength"] == 0.6
    plain = await run_task(client)
    assert plain["request"]["strength"] is None


async def test_listing_filters_by_status_and_pages(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/v1/tasks?wait=60", json=TINY_TASK)).json()["id"] for _ in range(3)]
    first = (await client.get("/v1/tasks", params={"limit": 2, "status": "succeeded"})).json()
    assert [task["id"] for task in first["data"]] == ids[::-1][:2]
    second = (await client.get("/v1/tasks", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [task["id"] for task in second["data"]] == [ids[0]]
    assert second["next_cursor"] is None
    assert (await client.get("/v1/tasks", params={"status": "failed"})).json()["data"] == []


async def test_cancel_a_queued_task_never_runs_and_a_running_one_stops(client: httpx.AsyncClient) -> None:
    slow = (await client.post("/v1/tasks", json={**TINY_TASK, "num_inference_steps": 200})).json()
    queued = (await client.post("/v1/tasks", json=TINY_TASK)).json()
    await wait_until(client, slow["id"], "running")
    canceled = await client.post(f"/v1/tasks/{queued['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"

    running = await wait_until(client, slow["id"], "running")
    while running["progress"]["step"] < 1:
        running = await wait_until(client, slow["id"], "running")
    assert (await client.post(f"/v1/tasks/{slow['id']}/cancel")).status_code == 200
    stopped = await wait_until(client, slow["id"], "canceled")
    assert stopped["progress"]["step"] < 200
    assert stopped["results"] == []

    never_ran = (await client.get(f"/v1/tasks/{queued['id']}")).json()
    assert never_ran["status"] == "canceled"
    assert never_ran["attempts"] == 0 and never_ran["started_at"] is None
    again = await client.post(f"/v1/tasks/{queued['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "task_conflict"


async def test_queue_position_counts_the_tasks_ahead(client: httpx.AsyncClient) -> None:
    slow = (await client.post("/v1/tasks", json={**TINY_TASK, "num_inference_steps": 200})).json()
    await wait_until(client, slow["id"], "running")
    behind = [(await client.post("/v1/tasks", json=TINY_TASK)).json() for _ in range(2)]
    assert [task["queue_position"] for task in behind] == [0, 1]
    urgent = (await client.post("/v1/tasks", json={**TINY_TASK, "priority": 5})).json()
    assert urgent["queue_position"] == 0
    for task in (slow, *behind, urgent):
        await client.post(f"/v1/tasks/{task['id']}/cancel")


async def test_events_stream_progress_then_the_final_state(client: httpx.AsyncClient) -> None:
    created = (await client.post("/v1/tasks", json={**TINY_TASK, "num_inference_steps": 4})).json()
    response = await client.get(f"/v1/tasks/{created['id']}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ").strip() for line in response.text.splitlines() if line.startswith("event:")]
    assert events[-1] == "succeeded"
    assert "progress" in events
    assert events.index("progress") < events.index("succeeded")


async def test_fifty_tasks_from_ten_clients_all_succeed_exactly_once(
    client: httpx.AsyncClient, service: Service
) -> None:
    async def one_client(offset: int) -> list[str]:
        return [
            (await client.post("/v1/tasks", json={**TINY_TASK, "seed": offset * 5 + i})).json()["id"] for i in range(5)
        ]

    ids = [task_id for batch in await asyncio.gather(*(one_client(c) for c in range(10))) for task_id in batch]
    assert len(set(ids)) == 50
    finished = [await wait_until(client, task_id, "succeeded", "failed", timeout=180) for task_id in ids]
    assert {task["status"] for task in finished} == {"succeeded"}
    assert {task["attempts"] for task in finished} == {1}, "no task ran twice"
    assert sorted(task["results"][0]["seed"] for task in finished) == list(range(50))


async def test_previews_are_listed_and_streamed(client: httpx.AsyncClient) -> None:
    created = (await client.post("/v1/tasks", json={**TINY_TASK, "num_inference_steps": 4, "partial_images": 2})).json()
    response = await client.get(f"/v1/tasks/{created['id']}/events")
    events = [line.removeprefix("event: ").strip() for line in response.text.splitlines() if line.startswith("event:")]
    assert events.count("preview") == 2 and events[-1] == "succeeded"
    task = (await client.get(f"/v1/tasks/{created['id']}")).json()
    assert [preview["partial_index"] for preview in task["previews"]] == [0, 1]
    image = await download(client, task["previews"][1]["url"])
    assert image.status_code == 200 and picture(image.content).size == (256, 256)
