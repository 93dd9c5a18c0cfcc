"""The kie.ai / Apikley jobs API (`/api/v1/jobs/...`): the seed document's example replayed against a
real server, every field of the answers, the error envelope, and the callback rendering.

The provider's smallest size preset is 512x512, so only two tasks really generate here (2 steps).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from qwen_image_server.api.kie.schemas import CreateTaskBody
from qwen_image_server.api.kie.translate import (
    callback_headers,
    callback_payload,
    error_envelope,
    record_data,
    to_generation_request,
)
from qwen_image_server.domain import GenerationRequest, ModelName, OutputFormat
from qwen_image_server.engine import Engine
from qwen_image_server.errors import GenerationFailed, InvalidParameter, QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, StoredImage, Task, TaskError, TaskStatus
from tests.api.conftest import FAST_SERVICE
from tests.conftest import TINY_EVERYWHERE, LiveServer, asgi_client, picture_bytes

pytestmark = pytest.mark.anyio

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
AUTH = {"Authorization": "Bearer test-key"}
STATES = {"waiting", "queuing", "generating", "success", "fail"}
RECORD_FIELDS = {
    "taskId",
    "model",
    "state",
    "param",
    "resultJson",
    "failCode",
    "failMsg",
    "costTime",
    "completeTime",
    "createTime",
    "updateTime",
}

# The seed's own example request, with the smallest size preset and 2 steps instead of 30.
SEED_EXAMPLE: dict[str, Any] = {
    "model": "qwen/text-to-image",
    "callBackUrl": "https://your-domain.com/api/callback",
    "input": {
        "prompt": "a lighthouse on a cliff at dawn",
        "image_size": "square",
        "num_inference_steps": 2,
        "guidance_scale": 2.5,
        "enable_safety_checker": True,
        "output_format": "png",
        "negative_prompt": " ",
        "acceleration": "none",
    },
}


def tiny_t2i(**inputs: Any) -> dict[str, Any]:
    return {
        "model": "qwen/text-to-image",
        "input": {"prompt": "fox", "image_size": "square", "num_inference_steps": 2, **inputs},
    }


def png_data_uri(size: tuple[int, int] = (96, 64)) -> str:
    return "data:image/png;base64," + base64.b64encode(picture_bytes(size)).decode()


def assert_envelope(response: httpx.Response, code: int, http_status: int = 200) -> dict[str, Any]:
    assert response.status_code == http_status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "msg", "data"}
    assert body["code"] == code and isinstance(body["msg"], str) and body["msg"]
    return body


def assert_record_shape(data: dict[str, Any]) -> None:
    assert set(data) == RECORD_FIELDS
    assert data["state"] in STATES
    for name in ("taskId", "model", "param", "failCode", "failMsg"):
        assert isinstance(data[name], str), name
    for name in ("costTime", "createTime", "updateTime"):
        assert isinstance(data[name], int), name
    assert data["completeTime"] is None or isinstance(data["completeTime"], int)
    assert data["resultJson"] is None or isinstance(data["resultJson"], str)
    assert json.loads(data["param"])["model"] == data["model"]


def test_the_seed_example_replayed_over_http(live_server: LiveServer) -> None:
    created = httpx.post(live_server.url + CREATE, json=SEED_EXAMPLE, headers=AUTH, timeout=30)
    task_id = assert_envelope(created, 200)["data"]["taskId"]
    assert set(created.json()["data"]) == {"taskId"} and task_id.startswith("task_")

    deadline = time.monotonic() + 120
    while True:
        answer = httpx.get(live_server.url + RECORD, params={"taskId": task_id}, headers=AUTH, timeout=30)
        data = assert_envelope(answer, 200)["data"]
        assert_record_shape(data)
        if data["state"] in ("success", "fail"):
            break
        assert data["resultJson"] is None and data["completeTime"] is None
        assert time.monotonic() < deadline, f"stuck in {data['state']}"
        time.sleep(0.05)

    assert data["state"] == "success", data["failMsg"]
    assert data["taskId"] == task_id and data["model"] == "qwen/text-to-image"
    assert data["failCode"] == data["failMsg"] == ""
    assert data["createTime"] <= data["completeTime"] == data["updateTime"]
    assert 0 < data["costTime"] <= data["completeTime"] - data["createTime"] + 1  # both rounded to ms
    assert abs(data["createTime"] / 1000 - time.time()) < 300, "epoch milliseconds"
    param = json.loads(data["param"])
    assert param["callBackUrl"] == SEED_EXAMPLE["callBackUrl"]
    expected_input = {
        key: SEED_EXAMPLE["input"][key]
        for key in (
            "prompt",
            "image_size",
            "num_inference_steps",
            "guidance_scale",
            "output_format",
            "negative_prompt",
            "acceleration",
        )
    }
    assert {key: param["input"][key] for key in expected_input} == expected_input
    assert isinstance(param["input"]["seed"], int), "the seed used is reported"

    [url] = json.loads(data["resultJson"])["resultUrls"]
    assert url.startswith(live_server.url)
    image = httpx.get(url, timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (512, 512)


@pytest.fixture
async def service(tmp_path: Path, engine: Engine) -> AsyncIterator[Service]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data")
    service = Service.build(settings, engine=engine, run_worker=True)
    async with service.running():
        yield service


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(service, headers=AUTH) as client:
        yield client


async def poll_until_done(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        data: dict[str, Any] = (await client.get(RECORD, params={"taskId": task_id})).json()["data"]
        if data["state"] in ("success", "fail"):
            return data
        assert time.monotonic() < deadline, f"stuck in {data['state']}"
        await asyncio.sleep(0.05)


async def test_acceleration_runs_the_level_and_is_echoed(client: httpx.AsyncClient, service: Service) -> None:
    created = await client.post(CREATE, json=tiny_t2i(acceleration="high", seed=4))
    task_id = assert_envelope(created, 200)["data"]["taskId"]
    data = await poll_until_done(client, task_id)
    assert data["state"] == "success", data["failMsg"]
    assert json.loads(data["param"])["input"]["acceleration"] == "high"
    assert (await service.store.get(task_id)).request.acceleration == "high"


async def test_a_level_this_server_cannot_run_is_refused_in_the_envelope(tmp_path: Path, engine: Engine) -> None:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", compile=True)
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service, headers=AUTH) as client:
        body = assert_envelope(await client.post(CREATE, json=tiny_t2i(acceleration="regular")), 422)
        assert "acceleration" in body["msg"] and "compile" in body["msg"]
        assert (await service.store.list_tasks()).tasks == []


async def test_image_to_image_with_a_strength(client: httpx.AsyncClient, service: Service) -> None:
    inputs = {"prompt": "a fox", "image_url": png_data_uri((128, 96)), "strength": 0.5, "num_inference_steps": 4}
    created = await client.post(CREATE, json={"model": "qwen/image-to-image", "input": inputs})
    task_id = assert_envelope(created, 200)["data"]["taskId"]
    data = await poll_until_done(client, task_id)
    assert data["state"] == "success", data["failMsg"]
    assert data["model"] == "qwen/image-to-image"
    echoed = json.loads(data["param"])
    assert echoed["model"] == "qwen/image-to-image" and echoed["input"]["strength"] == 0.5
    request = (await service.store.get(task_id)).request
    assert request.pipeline_mode == "image_to_image" and request.denoising_steps == 2
    assert (request.width, request.height) == (1184, 880), "the input's aspect ratio at about 1 MP"


async def test_an_edit_as_jpeg_with_a_callback_url(client: httpx.AsyncClient, service: Service) -> None:
    body = {
        "model": "qwen/image-edit",
        "callBackUrl": "https://example.com/kie-hook",
        "input": {
            "prompt": "make it blue",
            "image_url": png_data_uri(),
            "image_size": "square",
            "num_inference_steps": 2,
            "guidance_scale": 1,
            "seed": 11,
            "output_format": "jpeg",
        },
    }
    task_id = assert_envelope(await client.post(CREATE, json=body), 200)["data"]["taskId"]
    data = await poll_until_done(client, task_id)
    assert_record_shape(data)
    assert data["state"] == "success" and data["model"] == "qwen/image-edit"
    param = json.loads(data["param"])
    assert param["input"]["seed"] == 11 and param["input"]["image_size"] == "square"
    [url] = json.loads(data["resultJson"])["resultUrls"]
    parts = urlsplit(url)
    image = await client.get(f"{parts.path}?{parts.query}")
    assert image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (512, 512)

    task = await service.store.get(task_id)
    assert task.callback_url == "https://example.com/kie-hook" and task.dialect == "kie"
    assert task.request.true_cfg_scale == 1.0 and task.request.model is ModelName.QWEN_IMAGE_EDIT
    payload = callback_payload(task, lambda image, _task: (f"https://cdn/{image.key}", datetime.now(UTC)))
    assert payload["code"] == 200 and payload["msg"] == "Playground task completed successfully."
    result = json.loads(payload["data"]["resultJson"])
    assert result["resultUrls"] == [f"https://cdn/{task_id}/0.jpg"]
    # kie checks by default (enable_safety_checker); this server has no checker and says so.
    assert "no safety checker" in result["not_applied"]["safety_check"]


BAD_BODIES: dict[str, dict[str, Any]] = {
    "missing prompt": {"model": "qwen/text-to-image", "input": {"image_size": "square"}},
    "missing input": {"model": "qwen/text-to-image"},
    "unknown model": {**tiny_t2i(), "model": "qwen/image-upscale"},
    "bad size preset": tiny_t2i(image_size="1024x1024"),
    "size object": tiny_t2i(image_size={"width": 512, "height": 512}),
    "prompt over 5000": tiny_t2i(prompt="a" * 5001),
    "negative over 500": tiny_t2i(negative_prompt="a" * 501),
    "one step": tiny_t2i(num_inference_steps=1),
    "251 steps": tiny_t2i(num_inference_steps=251),
    "guidance 21": tiny_t2i(guidance_scale=21),
    "webp": tiny_t2i(output_format="webp"),
    "acceleration max": tiny_t2i(acceleration="max"),
    "unknown input field": tiny_t2i(colour="red"),
    "negative seed": tiny_t2i(seed=-1),
    "ftp callback": {**tiny_t2i(), "callBackUrl": "ftp://example.com/x"},
    "image_url on text-to-image": tiny_t2i(image_url=png_data_uri()),
    "edit without image_url": {"model": "qwen/image-edit", "input": {"prompt": "fox"}},
    "image-to-image without image_url": {"model": "qwen/image-to-image", "input": {"prompt": "fox"}},
    "strength on text-to-image": tiny_t2i(strength=0.5),
    "strength 0": {
        "model": "qwen/image-to-image",
        "input": {"prompt": "x", "image_url": png_data_uri(), "strength": 0},
    },
    "edit prompt over 2000": {"model": "qwen/image-edit", "input": {"prompt": "a" * 2001, "image_url": png_data_uri()}},
    "edit of a dead url": {
        "model": "qwen/image-edit",
        "input": {"prompt": "x", "image_url": "http://127.0.0.1:9/a.png"},
    },
    "edit of a non-image": {
        "model": "qwen/image-edit",
        "input": {"prompt": "x", "image_url": "data:image/png;base64,aGk="},
    },
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_requests_are_code_422_with_http_200(client: httpx.AsyncClient, case: str) -> None:
    body = assert_envelope(await client.post(CREATE, json=BAD_BODIES[case]), 422)
    assert body["data"] is None


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"model=qwen/text-to-image", "application/x-www-form-urlencoded"),
        (json.dumps(tiny_t2i()).encode(), "text/plain"),
    ],
)
async def test_wrong_content_is_code_422(client: httpx.AsyncClient, content: bytes, content_type: str) -> None:
    assert_envelope(await client.post(CREATE, content=content, headers={"content-type": content_type}), 422)


async def test_unknown_tasks_and_paths(client: httpx.AsyncClient) -> None:
    assert assert_envelope(await client.get(RECORD, params={"taskId": "task_nope"}), 404)["data"] is None
    assert_envelope(await client.get(RECORD), 422)
    assert_envelope(await client.get(RECORD, params={"taskId": ""}), 422)
    assert_envelope(await client.get(CREATE), 404)
    assert_envelope(await client.get("/api/v1/jobs/nothing"), 404)


async def test_a_model_this_server_does_not_serve_is_code_505(tmp_path: Path) -> None:
    settings = Settings(**TINY_EVERYWHERE, models=(ModelName.QWEN_IMAGE,), data_dir=tmp_path / "data")
    service = Service.build(settings, run_worker=False)
    async with service.running(), asgi_client(service) as client:
        edit = {"model": "qwen/image-edit", "input": {"prompt": "x", "image_url": png_data_uri()}}
        assert_envelope(await client.post(CREATE, json=edit), 505)


def test_defaults_and_guidance_becomes_true_cfg() -> None:
    body = CreateTaskBody.model_validate({"model": "qwen/text-to-image", "input": {"prompt": "fox"}})
    request = to_generation_request(body, ())
    assert (request.width, request.height, request.num_inference_steps) == (1024, 1024, 30)
    assert request.true_cfg_scale == 2.5 and request.guidance_scale is None
    assert request.output_format is OutputFormat.PNG and request.max_sequence_length == 1024
    sizes = {
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
        "square": (512, 512),
        "square_hd": (1024, 1024),
    }
    for preset, size in sizes.items():
        body = CreateTaskBody.model_validate(
            {"model": "qwen/text-to-image", "input": {"prompt": "f", "image_size": preset}}
        )
        assert (to_generation_request(body, ()).width, to_generation_request(body, ()).height) == size
    edit = CreateTaskBody.model_validate({"model": "qwen/image-edit", "input": {"prompt": "f", "image_url": "x"}})
    edited = to_generation_request(edit, (picture_bytes((200, 100)),))
    assert edited.true_cfg_scale == 4.0
    assert edited.width / edited.height == pytest.approx(2, rel=0.02), "keeps the input's aspect ratio"


def make_task(status: TaskStatus, error: TaskError | None = None, size: tuple[int, int] = (768, 1024)) -> Task:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    width, height = size
    request = GenerationRequest.create(
        model="qwen-image", prompt="fox", width=width, height=height, num_inference_steps=2, true_cfg_scale=2.5, seed=5
    )
    done = status.is_terminal
    image = StoredImage("task_x/0.png", 0, 5, width, height, OutputFormat.PNG, 10, "0" * 64)
    return Task(
        id="task_x",
        status=status,
        request=request,
        dialect="kie",
        owner=None,
        priority=0,
        callback_url=None,
        attempts=1,
        max_attempts=3,
        progress=Progress(0, 2),
        results=(image,) if status is TaskStatus.SUCCEEDED else (),
        error=error,
        cancel_requested=False,
        created_at=created,
        started_at=created + timedelta(seconds=2) if status is not TaskStatus.QUEUED else None,
        finished_at=created + timedelta(seconds=9.5) if done else None,
        updated_at=created + timedelta(seconds=9.5 if done else 1),
    )


def link(image: StoredImage, task: Task) -> tuple[str, datetime]:
    return f"https://cdn/{image.key}", datetime.now(UTC)


def test_record_states_and_failures() -> None:
    queued = record_data(make_task(TaskStatus.QUEUED), link)
    assert (queued.state, queued.completeTime, queued.costTime, queued.resultJson) == ("waiting", None, 0, None)
    assert queued.createTime == 1767323045000
    assert json.loads(queued.param) == {
        "model": "qwen/text-to-image",
        "input": {
            "prompt": "fox",
            "image_size": "portrait_4_3",
            "num_inference_steps": 2,
            "seed": 5,
            "guidance_scale": 2.5,
            "output_format": "png",
            "acceleration": "none",
            "enable_safety_checker": False,
        },
    }
    running = record_data(make_task(TaskStatus.RUNNING, size=(512, 768)), link)
    assert running.state == "generating"
    assert json.loads(running.param)["input"]["image_size"] == {"width": 512, "height": 768}, "not a preset"
    failed = record_data(make_task(TaskStatus.FAILED, TaskError("generation_failed", "out of memory")), link)
    assert (failed.state, failed.failCode, failed.failMsg) == ("fail", "501", "out of memory")
    assert failed.costTime == 7500 and failed.completeTime == 1767323054500
    too_long = make_task(TaskStatus.FAILED, TaskError("prompt_too_long", "the prompt is 2000 tokens"))
    assert record_data(too_long, link).failCode == "422"
    assert record_data(make_task(TaskStatus.CANCELED), link).state == "fail"


def test_callback_payloads() -> None:
    ok = callback_payload(make_task(TaskStatus.SUCCEEDED), link)
    assert ok["code"] == 200 and ok["msg"] == "Playground task completed successfully."
    assert set(ok["data"]) == RECORD_FIELDS
    data = ok["data"]
    assert (data["state"], data["costTime"], data["failCode"], data["failMsg"]) == ("success", 8, None, None)
    assert json.loads(data["resultJson"]) == {"resultUrls": ["https://cdn/task_x/0.png"]}
    failed = callback_payload(make_task(TaskStatus.FAILED, TaskError("generation_failed", "boom")), link)
    assert (failed["code"], failed["msg"]) == (501, "Playground task failed.")
    assert (failed["data"]["failCode"], failed["data"]["failMsg"], failed["data"]["resultJson"]) == (
        "501",
        "boom",
        None,
    )
    with pytest.raises(ValueError, match="only when a task ends"):
        callback_payload(make_task(TaskStatus.RUNNING), link)


def test_callback_signature_matches_the_providers_rule() -> None:
    # Expected value from: printf 'task_abc.1700000000' | openssl dgst -sha256 -hmac whk-secret -binary | base64
    headers = callback_headers("task_abc", "whk-secret", 1700000000)
    assert headers == {
        "X-Webhook-Timestamp": "1700000000",
        "X-Webhook-Signature": "76NlXPPA66/Q2obswGZIViAETfKCY7i6U+ZG4vF7l5Y=",
    }
    assert callback_headers("task_abc", b"whk-secret", 1700000000) == headers


@pytest.mark.parametrize(
    ("exc", "code", "http_status"),
    [(InvalidParameter("bad"), 422, 200), (GenerationFailed("no"), 501, 200), (QwenImageError("crash"), 500, 500)],
)
def test_error_envelopes(exc: QwenImageError, code: int, http_status: int) -> None:
    assert error_envelope(exc) == (http_status, {"code": code, "msg": exc.message, "data": None})
