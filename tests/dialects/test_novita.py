"""Novita's Qwen-Image API (`/v3/async/...`): the seed documents' examples replayed against a real
server, every field of the task result, the error body, the webhook rendering and Novita's SDK.

Novita has no steps field, so each real task runs the model's 50 steps; there are four (256x256).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from qwen_image_server.api.novita.schemas import DEFAULT_SIZE, EditBody, Txt2ImgBody
from qwen_image_server.api.novita.translate import (
    callback_payload,
    edit_request,
    error_body,
    novita_size,
    task_result,
    txt2img_request,
)
from qwen_image_server.domain import GenerationRequest, OutputFormat, Size, size_keeping_input
from qwen_image_server.errors import InvalidParameter, QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, StoredImage, Task, TaskError, TaskStatus
from qwen_image_server.tasks.store import TaskNotFound
from tests.conftest import TINY_EVERYWHERE, LiveServer, asgi_client, picture_bytes

TXT2IMG = "/v3/async/qwen-image-txt2img"
EDIT = "/v3/async/qwen-image-edit"
RESULT = "/v3/async/task-result"
AUTH = {"Authorization": "Bearer test-key"}
STATUSES = {"TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"}
ENDED = {"TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"}
# Seed 000's own example request; only the size is smaller (its example asks 1024*1024).
SEED_TXT2IMG: dict[str, Any] = {
    "prompt": "A cinematic scene of a quiet girl with short brown hair sitting by a misty lake at dawn. She wears an "
    "oversized sweater, holding a warm mug. Soft morning light filters through the trees, cool tones, tranquil "
    "mood, light fog, 50mm photography style.",
    "size": "256*256",
}


# -- helpers -------------------------------------------------------------------------------------


def assert_result_shape(body: dict[str, Any]) -> None:
    """Every field of the documented task-result body, with the documented types."""
    assert set(body) == {"extra", "task", "images", "videos", "audios"}
    extra, task = body["extra"], body["task"]
    assert {"seed", "has_nsfw_contents"} <= set(extra)
    assert extra["seed"].isdigit() and extra["has_nsfw_contents"] == []
    assert extra["enable_nsfw_detection"] is False
    assert set(extra["debug_info"]) == {"request_info", "submit_time_ms", "execute_time_ms", "complete_time_ms"}
    assert all(isinstance(value, str) for value in extra["debug_info"].values())
    assert set(task) == {"task_id", "task_type", "status", "reason", "eta", "progress_percent"}
    assert isinstance(task["task_id"], str) and isinstance(task["reason"], str)
    assert task["task_type"] in ("QWEN_IMAGE_TEXT_TO_IMAGE", "QWEN_IMAGE_EDIT")
    assert task["status"] in STATUSES
    assert isinstance(task["eta"], int) and isinstance(task["progress_percent"], int)
    assert 0 <= task["progress_percent"] <= 100
    for image in body["images"]:
        assert set(image) == {"image_url", "image_url_ttl", "image_type", "nsfw_detection_result"}
        assert isinstance(image["image_url"], str) and image["image_url_ttl"].isdigit()
        assert image["nsfw_detection_result"] is None
    assert body["videos"] == [] and body["audios"] == []
    if task["status"] != "TASK_STATUS_SUCCEED":
        assert body["images"] == []


def poll(base: str, task_id: str, timeout: float = 300) -> tuple[dict[str, Any], list[str]]:
    """Poll the task result as Novita documents it, until it ends; also return the statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(base + RESULT, params={"task_id": task_id}, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert_result_shape(body)
        if not seen or seen[-1] != body["task"]["status"]:
            seen.append(body["task"]["status"])
        if body["task"]["status"] in ENDED:
            return body, seen
        assert time.monotonic() < deadline, f"stuck in {seen[-1]}"
        time.sleep(0.1)


def download(url: str, content_type: str) -> Image.Image:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == content_type
    return Image.open(io.BytesIO(answer.content))


def assert_error(answer: httpx.Response, status: int, reason: str, param: str | None = None) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"code", "reason", "message", "metadata"}
    assert body["code"] == status and body["reason"] == reason
    assert isinstance(body["message"], str) and body["message"]
    assert body["metadata"] == ({"param": param} if param else {})
    return str(body["message"])


# -- against the running server ------------------------------------------------------------------


def test_the_txt2img_seed_example_replayed_over_http(live_server: LiveServer) -> None:
    created = httpx.post(live_server.url + TXT2IMG, json=SEED_TXT2IMG, headers=AUTH, timeout=30)
    assert created.status_code == 200 and set(created.json()) == {"task_id"}
    task_id = created.json()["task_id"]

    body, seen = poll(live_server.url, task_id)
    assert seen[-1] == "TASK_STATUS_SUCCEED", body["task"]["reason"]
    assert set(seen) <= {"TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED"}
    task = body["task"]
    assert task == {"task_id": task_id, "task_type": "QWEN_IMAGE_TEXT_TO_IMAGE", "status": "TASK_STATUS_SUCCEED",
                    "reason": "", "eta": 0, "progress_percent": 100}  # fmt: skip
    debug = body["extra"]["debug_info"]
    assert 0 < int(debug["submit_time_ms"]) <= int(debug["execute_time_ms"]) <= int(debug["complete_time_ms"])
    [image] = body["images"]
    assert image["image_url"].startswith(live_server.url) and image["image_type"] == "jpeg"
    assert 0 < int(image["image_url_ttl"]) <= live_server.service.settings.result_ttl_seconds
    assert download(image["image_url"], "image/jpeg").size == (256, 256)


def test_an_edit_of_base64_as_png_with_a_seed(live_server: LiveServer) -> None:
    source = base64.b64encode(picture_bytes((256, 256), color=(20, 90, 200))).decode()
    edit = {"prompt": "make the sky orange", "image": source, "seed": 42, "output_format": "png"}
    created = httpx.post(live_server.url + EDIT, json=edit, headers=AUTH, timeout=30)
    assert created.status_code == 200 and set(created.json()) == {"task_id"}

    body, seen = poll(live_server.url, created.json()["task_id"])
    assert seen[-1] == "TASK_STATUS_SUCCEED", body["task"]["reason"]
    assert body["task"]["task_type"] == "QWEN_IMAGE_EDIT" and body["extra"]["seed"] == "42"
    [image] = body["images"]
    assert image["image_type"] == "png"
    assert download(image["image_url"], "image/png").size == (256, 256)


def test_any_size_in_novitas_range_comes_back_at_exactly_that_size(live_server: LiveServer) -> None:
    # Novita documents 256-1536 per side, with no grid: sizes such as 1000*1000 are the caller's to pick
    # (this one is small and odd on both sides, for speed).
    asked = {"prompt": "a red fox in snow", "size": "257*300"}
    created = httpx.post(live_server.url + TXT2IMG, json=asked, headers=AUTH, timeout=30)
    assert created.status_code == 200, created.text
    body, seen = poll(live_server.url, created.json()["task_id"])
    assert seen[-1] == "TASK_STATUS_SUCCEED", body["task"]["reason"]
    [image] = body["images"]
    assert download(image["image_url"], "image/jpeg").size == (257, 300)


def test_a_canceled_task_reads_as_failed_with_a_reason(live_server: LiveServer) -> None:
    big = {"prompt": "a slow painting", "size": "1536*1536"}
    task_id = httpx.post(live_server.url + TXT2IMG, json=big, headers=AUTH, timeout=30).json()["task_id"]
    # Novita has no cancel endpoint; the native API's cancel is what an operator would use.
    assert httpx.post(f"{live_server.url}/v1/tasks/{task_id}/cancel", timeout=30).status_code == 200
    body, _seen = poll(live_server.url, task_id)
    assert body["task"]["status"] == "TASK_STATUS_FAILED"
    assert body["task"]["reason"].startswith("task canceled") and body["images"] == []


def test_novitas_python_sdk_runs_a_task(live_server: LiveServer) -> None:
    novita_client = pytest.importorskip("novita_client")
    client = novita_client.NovitaClient("test-key", base_url=live_server.url)
    # The SDK has no qwen-image method; its generic v3 POST and v3 task waiting are what it offers.
    submitted = client._post(TXT2IMG, {"prompt": "a red fox in snow", "size": "256*256"})
    result = client.wait_for_task_v3(submitted["task_id"], wait_for=600)
    assert result.task.status == novita_client.V3TaskResponseStatus.TASK_STATUS_SUCCEED
    assert result.task.task_type == "QWEN_IMAGE_TEXT_TO_IMAGE" and isinstance(result.extra.seed, int)
    assert result.images[0].image_type == "jpeg" and result.images[0].image_url_ttl > 0
    assert download(result.get_image_urls()[0], "image/jpeg").size == (256, 256)

    with pytest.raises(novita_client.NovitaResponseError, match="INVALID_REQUEST_BODY"):
        client._post(TXT2IMG, {"size": "256*256"})
    with pytest.raises(novita_client.NovitaResponseError, match="404"):
        client.async_task_result("task_nope")


# -- errors and webhooks, in-process without a worker ----------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = Settings(**TINY_EVERYWHERE, models=("qwen-image", "qwen-image-edit"), data_dir=tmp_path / "data")
    async with Service.build(settings, run_worker=False).running() as service:
        yield service


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(service, headers=AUTH) as client:
        yield client


@pytest.mark.anyio
async def test_the_webhook_url_is_kept_with_the_task(client: httpx.AsyncClient, service: Service) -> None:
    hook = "https://example.com/novita-hook"
    answer = await client.post(TXT2IMG, json={"prompt": "fox", "extra": {"webhook": {"url": hook}, "other": 1}})
    task = await service.store.get(answer.json()["task_id"])
    assert task.callback_url == hook and task.dialect == "novita"
    assert (task.request.width, task.request.height) == (1024, 1024), "the documented default size"


@pytest.mark.anyio
async def test_nulls_and_unknown_fields_are_defaults(client: httpx.AsyncClient, service: Service) -> None:
    answer = await client.post(TXT2IMG, json={"prompt": "fox", "size": None, "extra": None, "steps": 4})
    task = await service.store.get(answer.json()["task_id"])
    assert (task.request.width, task.request.height, task.callback_url) == (1024, 1024, None)
    assert task.request.num_inference_steps == 50, "an unknown field is ignored, as Novita does"
    image = base64.b64encode(picture_bytes((256, 256))).decode()
    answer = await client.post(EDIT, json={"prompt": "x", "image": image, "seed": None, "output_format": None})
    task = await service.store.get(answer.json()["task_id"])
    assert task.request.output_format is OutputFormat.JPEG and task.request.model.value == "qwen-image-edit"


@pytest.mark.anyio
async def test_sizes_off_the_16_pixel_grid_are_accepted(client: httpx.AsyncClient, service: Service) -> None:
    answer = await client.post(TXT2IMG, json={"prompt": "fox", "size": "1000*1000"})
    assert answer.status_code == 200, answer.text
    task = await service.store.get(answer.json()["task_id"])
    assert (task.request.width, task.request.height) == (1000, 1000), "the size asked, made exactly"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "256*256"}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "fox", "size": "128*128"}, "size"),
        ({"prompt": "fox", "size": "2048*1024"}, "size"),
        ({"prompt": "fox", "size": "1537*1000"}, "size"),
        ({"prompt": "fox", "size": "big"}, "size"),
        ({"prompt": "fox", "extra": {"webhook": {"url": "ftp://example.com"}}}, "extra.webhook.url"),
    ],
)
async def test_bad_txt2img_requests(client: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    assert_error(await client.post(TXT2IMG, json=body), 400, "INVALID_REQUEST_BODY", param)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"image": None}, "image"),
        ({"seed": -2}, "seed"),
        ({"seed": 2**31}, "seed"),
        ({"output_format": "gif"}, "output_format"),
        ({"image": "not base64!"}, "images[0]"),
        ({"image": "http://127.0.0.1:9/missing.png"}, "images[0]"),
    ],
)
async def test_bad_edit_requests(client: httpx.AsyncClient, fields: dict[str, Any], param: str) -> None:
    image = base64.b64encode(picture_bytes((256, 256))).decode()
    body = {key: value for key, value in {"prompt": "x", "image": image, **fields}.items() if value is not None}
    assert_error(await client.post(EDIT, json=body), 400, "INVALID_REQUEST_BODY", param)


@pytest.mark.anyio
async def test_errors_in_novitas_shape(client: httpx.AsyncClient) -> None:
    # An unknown model is an unknown endpoint: Novita names the model in the path.
    assert_error(await client.post("/v3/async/flux-txt2img", json={"prompt": "x"}), 404, "NOT_FOUND")
    assert_error(await client.get(TXT2IMG), 405, "METHOD_NOT_ALLOWED")
    text = await client.post(TXT2IMG, content=b'{"prompt": "x"}', headers={"content-type": "text/plain"})
    assert_error(text, 400, "INVALID_REQUEST_BODY")
    broken = await client.post(TXT2IMG, content=b"{nope", headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(broken, 400, "INVALID_REQUEST_BODY")
    assert_error(await client.get(RESULT), 400, "INVALID_REQUEST_BODY", "task_id")
    assert_error(await client.get(RESULT, params={"task_id": "task_nope"}), 404, "TASK_NOT_FOUND")


# -- pure translation ----------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def made_task(status: TaskStatus, **changes: Any) -> Task:
    request = GenerationRequest.create(model="qwen-image", prompt="fox", width=256, height=256, seed=5)
    task = Task(
        id="task_1", status=status, request=request, dialect="novita", owner=None, priority=0,
        callback_url=None, attempts=1, max_attempts=3, progress=Progress(0, 50), results=(), error=None,
        cancel_requested=False, created_at=NOW - timedelta(seconds=30), started_at=None, finished_at=None,
        updated_at=NOW,
    )  # fmt: skip
    return replace(task, **changes)


def link(image: StoredImage, task: Task) -> tuple[str, datetime]:
    return f"https://img.example/{image.key}", NOW + timedelta(hours=1)


RESULT_IMAGE = StoredImage("task_1/0.jpg", 0, 5, 256, 256, OutputFormat.JPEG, 10, "ab")


@pytest.mark.parametrize(
    ("status", "changes", "expected"),
    [
        (TaskStatus.QUEUED, {}, ("TASK_STATUS_QUEUED", "", 0, 0)),
        (TaskStatus.RUNNING, {"started_at": NOW - timedelta(seconds=10), "progress": Progress(10, 50)},
         ("TASK_STATUS_PROCESSING", "", 40, 20)),
        (TaskStatus.SUCCEEDED, {"results": (RESULT_IMAGE,), "progress": Progress(50, 50)},
         ("TASK_STATUS_SUCCEED", "", 0, 100)),
        (TaskStatus.FAILED, {"error": TaskError("generation_failed", "out of memory")},
         ("TASK_STATUS_FAILED", "out of memory", 0, 0)),
        (TaskStatus.CANCELED, {}, ("TASK_STATUS_FAILED", "task canceled", 0, 0)),
        (TaskStatus.CANCELED, {"error": TaskError("canceled", "by the operator")},
         ("TASK_STATUS_FAILED", "task canceled: by the operator", 0, 0)),
    ],
)  # fmt: skip
def test_every_state_renders(status: TaskStatus, changes: dict[str, Any], expected: tuple[Any, ...]) -> None:
    body = task_result(made_task(status, **changes), link, now=NOW).model_dump(mode="json")
    assert_result_shape(body)
    task = body["task"]
    assert (task["status"], task["reason"], task["eta"], task["progress_percent"]) == expected
    assert body["extra"]["seed"] == "5"
    assert body["extra"]["debug_info"]["submit_time_ms"] == str(int((NOW.timestamp() - 30) * 1000))
    if status is TaskStatus.SUCCEEDED:
        assert body["images"] == [{"image_url": "https://img.example/task_1/0.jpg", "image_url_ttl": "3600",
                                   "image_type": "jpeg", "nsfw_detection_result": None}]  # fmt: skip


def test_the_webhook_payload_is_the_task_result() -> None:
    task = made_task(TaskStatus.SUCCEEDED, results=(RESULT_IMAGE,))
    payload = callback_payload(task, link, now=NOW)
    assert payload == {"event_type": "ASYNC_TASK_RESULT", "payload": task_result(task, link, now=NOW).model_dump()}
    assert payload["payload"]["task"]["status"] == "TASK_STATUS_SUCCEED"


def test_request_translation() -> None:
    request = txt2img_request(Txt2ImgBody(prompt="fox"))
    assert DEFAULT_SIZE == "1024*1024" and (request.width, request.height) == (1024, 1024)
    assert request.output_format is OutputFormat.JPEG and request.num_inference_steps == 50
    assert novita_size("1536*256") == Size(1536, 256)
    assert novita_size("1000*1000") == Size(1000, 1000)
    image = picture_bytes((640, 480))
    edit = edit_request(EditBody(prompt="x", image="-", seed=-1), image)
    assert (edit.width, edit.height) == (640, 480) and edit.output_format is OutputFormat.JPEG
    assert 0 <= edit.seed < 2**31 and edit.images == (image,)
    assert edit_request(EditBody(prompt="x", image="-", seed=9), image).seed == 9


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (640, 480)), ((2000, 1500), (1184, 880)), ((100, 50), (512, 256)), ((300, 301), (304, 304))],
)
def test_an_edit_keeps_the_input_size_within_bounds(size: tuple[int, int], expected: tuple[int, int]) -> None:
    result = size_keeping_input(picture_bytes(size))
    assert (result.width, result.height) == expected


@pytest.mark.parametrize(
    ("exc", "status", "reason"),
    [
        (InvalidParameter("bad", param="size"), 400, "INVALID_REQUEST_BODY"),
        (TaskNotFound("no such task"), 404, "TASK_NOT_FOUND"),
        (QwenImageError("boom"), 500, "INTERNAL_SERVER_ERROR"),
    ],
)
def test_error_reasons(exc: QwenImageError, status: int, reason: str) -> None:
    body = error_body(exc)
    assert (body.code, body.reason, body.message) == (status, reason, exc.message)
