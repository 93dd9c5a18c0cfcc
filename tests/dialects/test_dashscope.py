"""DashScope's image APIs and Pixazo's wrapper, in-process over ASGI on a real service (SQLite, local
results, a worker running the tiny model): the synchronous multimodal call, the async task API,
cancel, every field of the answers, and DashScope's error shape and codes."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from qwen_image_server.api.dashscope.errors import DashScopeError, status_and_code
from qwen_image_server.api.dashscope.schemas import MultimodalBody
from qwen_image_server.api.dashscope.translate import (
    dashscope_size,
    dashscope_time,
    multimodal_ask,
    resolve_model,
    to_generation_request,
)
from qwen_image_server.domain import BatchEntry, GenerationRequest, ModelName, RenderedImage
from qwen_image_server.engine import Engine
from qwen_image_server.errors import (
    CheckpointUnavailable,
    GenerationFailed,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    PromptTooLong,
    QwenImageError,
    UnknownModel,
)
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.store import TaskConflict, TaskNotFound
from qwen_image_server.worker.worker import GenerationEngine
from tests.api.conftest import FAST_SERVICE
from tests.conftest import TINY_EVERYWHERE, asgi_client, picture_bytes

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/services/aigc/multimodal-generation/generation"
ASYNC = "/api/v1/services/aigc/text2image/image-synthesis"
PIXAZO = "/qwen-image/v1/generateMultimodeTextToImageRequest"
AUTH = {"Authorization": "Bearer sk-test"}
ASYNC_AUTH = {**AUTH, "X-DashScope-Async": "enable"}
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")
FAST = {"size": "256*256", "num_inference_steps": 2, "seed": 7}


def png_uri(size: tuple[int, int] = (96, 64)) -> str:
    return "data:image/png;base64," + base64.b64encode(picture_bytes(size)).decode()


def multimodal(model: str = "qwen-image", text: str = "a red fox in snow", images: int = 0, **parameters: Any) -> dict:
    content: list[dict[str, str]] = [{"image": png_uri()} for _ in range(images)]
    content.append({"text": text})
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {**FAST, **parameters},
    }


def message(model: str, *items: dict[str, str], role: str = "user") -> dict:
    return {"model": model, "input": {"messages": [{"role": role, "content": list(items)}]}}


def synthesis(prompt: str = "a red fox in snow", **parameters: Any) -> dict:
    return {"model": "qwen-image", "input": {"prompt": prompt}, "parameters": {**FAST, **parameters}}


async def build(tmp_path: Path, engine: GenerationEngine, **overrides: Any) -> Service:
    settings = Settings(**{**TINY_EVERYWHERE, **FAST_SERVICE, "data_dir": tmp_path / "data", **overrides})
    return Service.build(settings, engine=engine, run_worker=True)


@pytest.fixture
async def service(tmp_path: Path, engine: Engine) -> AsyncIterator[Service]:
    service = await build(tmp_path, engine)
    async with service.running():
        yield service


def http_client(service: Service) -> httpx.AsyncClient:
    return asgi_client(service, timeout=120)


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(service) as client:
        yield client


async def download(client: httpx.AsyncClient, url: str) -> Image.Image:
    parts = urlsplit(url)
    response = await client.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def assert_request_id(body: dict[str, Any]) -> str:
    request_id: str = body["request_id"]
    assert str(uuid.UUID(request_id)) == request_id
    return request_id


def assert_error(response: httpx.Response, status: int, code: str, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "request_id"}, body
    assert body["code"] == code, body
    assert body["message"] and isinstance(body["message"], str)
    assert_request_id(body)
    if message is not None:
        assert body["message"] == message


async def native_tasks(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = (await client.get("/v1/tasks")).json()["data"]
    return data


async def poll(client: httpx.AsyncClient, task_id: str, *statuses: str, timeout: float = 90) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["output"]["task_status"] in statuses:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"stuck in {body['output']['task_status']}"
        await asyncio.sleep(0.05)


# -- synchronous: multimodal-generation and Pixazo ---------------------------------------------------


async def test_text_to_image_answers_the_documented_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(SYNC, json=multimodal(n=2), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"output", "usage", "request_id"}
    assert_request_id(body)
    assert set(body["output"]) == {"choices", "task_metric"}
    [choice] = body["output"]["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert [set(item) for item in choice["message"]["content"]] == [{"image"}, {"image"}]
    assert body["output"]["task_metric"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert body["usage"] == {"width": 256, "height": 256, "image_count": 2}
    for item in choice["message"]["content"]:
        assert item["image"].startswith("http://testserver/v1/results/")
        assert (await download(client, item["image"])).size == (256, 256)
    [task] = await native_tasks(client)
    assert task["model"] == "qwen-image" and task["request"]["seed"] == 7 and task["request"]["n"] == 2


async def test_pixazo_takes_the_seed_example_with_its_key_header(client: httpx.AsyncClient) -> None:
    # The seed document's request, with a small size and 2 steps (extensions) for the tiny model.
    body = {
        "model": "qwen-image",
        "input": {"messages": [{"role": "user", "content": [{"text": "An elegant couplet hangs in a hall."}]}]},
        "parameters": {
            "negative_prompt": "",
            "prompt_extend": True,
            "watermark": True,
            "size": "512*512",
            "num_inference_steps": 2,
        },
    }
    headers = {"Ocp-Apim-Subscription-Key": "pixazo-key", "Cache-Control": "no-cache"}
    response = await client.post(PIXAZO, json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["output"]["task_metric"] == {"TOTAL": 1, "FAILED": 0, "SUCCEEDED": 1}
    assert answer["usage"] == {"width": 512, "image_count": 1, "height": 512}
    [item] = answer["output"]["choices"][0]["message"]["content"]
    assert (await download(client, item["image"])).size == (512, 512)
    [task] = await native_tasks(client)
    assert task["request"]["prompt"] == "An elegant couplet hangs in a hall."  # prompt_extend: unchanged


async def test_edit_takes_one_image_and_two_run_on_edit_plus(client: httpx.AsyncClient) -> None:
    one = await client.post(SYNC, json=multimodal("qwen-image-edit", "make it blue", images=1), headers=AUTH)
    assert one.status_code == 200, one.text
    assert one.json()["usage"] == {"width": 256, "height": 256, "image_count": 1}
    two = await client.post(SYNC, json=multimodal("qwen-image-edit", "side by side", images=2, n=2), headers=AUTH)
    assert two.status_code == 200, two.text
    assert len(two.json()["output"]["choices"][0]["message"]["content"]) == 2
    assert two.json()["output"]["task_metric"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    tasks = await native_tasks(client)  # newest first
    assert [task["model"] for task in tasks] == ["qwen-image-edit-plus", "qwen-image-edit"]
    assert [task["request"]["input_images"] for task in tasks] == [2, 1]


async def test_sizes_off_the_16_pixel_grid_come_back_exactly(client: httpx.AsyncClient) -> None:
    response = await client.post(SYNC, json=multimodal(size="260*257"), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"width": 260, "height": 257, "image_count": 1}


async def test_every_answer_has_a_fresh_request_id(client: httpx.AsyncClient) -> None:
    ids = {assert_request_id((await client.get("/api/v1/tasks/nope")).json()) for _ in range(3)}
    ids.add(assert_request_id((await client.post(SYNC, json={}, headers=AUTH)).json()))
    assert len(ids) == 4


# -- asynchronous: image-synthesis, tasks, cancel ----------------------------------------------------


async def test_async_task_from_pending_to_succeeded(client: httpx.AsyncClient) -> None:
    created = await client.post(ASYNC, json=synthesis(negative_prompt="blurry", n=2), headers=ASYNC_AUTH)
    assert created.status_code == 200, created.text
    body = created.json()
    assert set(body) == {"output", "request_id"}
    assert set(body["output"]) == {"task_id", "task_status"}
    assert body["output"]["task_status"] == "PENDING"
    task_id = body["output"]["task_id"]

    done = await poll(client, task_id, "SUCCEEDED", "FAILED")
    assert set(done) == {"request_id", "output", "usage"}
    output = done["output"]
    assert set(output) == {"task_id", "task_status", "submit_time", "scheduled_time", "end_time", "results",
                           "task_metrics"}  # fmt: skip
    assert output["task_id"] == task_id and output["task_status"] == "SUCCEEDED"
    times = [output[name] for name in ("submit_time", "scheduled_time", "end_time")]
    assert all(TIME.match(moment) for moment in times), times
    assert times == sorted(times)
    submitted = datetime.strptime(times[0], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - submitted).total_seconds()) < 300, "UTC"
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert done["usage"] == {"image_count": 2}
    assert len(output["results"]) == 2
    for result in output["results"]:
        assert set(result) == {"orig_prompt", "actual_prompt", "url"}
        assert result["orig_prompt"] == "a red fox in snow" != result["actual_prompt"], "extended by default"
        assert (await download(client, result["url"])).size == (256, 256)
    [task] = await native_tasks(client)
    assert task["id"] == task_id and task["request"]["negative_prompt"] == "blurry"


async def test_async_without_the_header_is_denied_like_dashscope(client: httpx.AsyncClient) -> None:
    response = await client.post(ASYNC, json=synthesis(), headers=AUTH)
    assert_error(response, 403, "AccessDenied", "current user api does not support synchronous calls")
    response = await client.post(SYNC, json=multimodal(), headers=ASYNC_AUTH)
    assert_error(response, 403, "AccessDenied", "current user api does not support asynchronous calls")
    assert await native_tasks(client) == []


async def test_async_edit_with_an_input_image(client: httpx.AsyncClient) -> None:
    body = {"model": "qwen-image-edit", "input": {"prompt": "blue", "images": [png_uri()]}, "parameters": FAST}
    created = await client.post(ASYNC, json=body, headers=ASYNC_AUTH)
    assert created.status_code == 200, created.text
    done = await poll(client, created.json()["output"]["task_id"], "SUCCEEDED", "FAILED")
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert (await native_tasks(client))[0]["model"] == "qwen-image-edit"


async def test_an_unknown_task_is_unknown(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tasks/0385dc79-5ff8-4d82-bcb6-000000000000", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "output"}
    assert body["output"] == {"task_id": "0385dc79-5ff8-4d82-bcb6-000000000000", "task_status": "UNKNOWN"}


async def test_cancel_only_while_pending(client: httpx.AsyncClient) -> None:
    slow = await client.post(ASYNC, json=synthesis(num_inference_steps=200), headers=ASYNC_AUTH)
    queued = await client.post(ASYNC, json=synthesis(), headers=ASYNC_AUTH)
    slow_id, queued_id = slow.json()["output"]["task_id"], queued.json()["output"]["task_id"]
    running = await poll(client, slow_id, "RUNNING")
    assert set(running["output"]) == {"task_id", "task_status", "submit_time", "scheduled_time", "task_metrics"}
    assert running["output"]["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 0}
    pending = (await client.get(f"/api/v1/tasks/{queued_id}", headers=AUTH)).json()
    assert pending["output"]["task_status"] == "PENDING" and "scheduled_time" not in pending["output"]

    canceled = await client.post(f"/api/v1/tasks/{queued_id}/cancel", headers=AUTH)
    assert canceled.status_code == 200, canceled.text
    assert set(canceled.json()) == {"request_id"}
    after = (await client.get(f"/api/v1/tasks/{queued_id}", headers=AUTH)).json()["output"]
    assert after["task_status"] == "CANCELED" and "results" not in after and TIME.match(after["end_time"])

    refused = "Failed to cancel the task, please confirm if the task is in PENDING status."
    assert_error(await client.post(f"/api/v1/tasks/{slow_id}/cancel"), 400, "UnsupportedOperation", refused)
    assert_error(await client.post(f"/api/v1/tasks/{queued_id}/cancel"), 400, "UnsupportedOperation", refused)
    assert_error(await client.post("/api/v1/tasks/nope/cancel"), 404, "NotFound")
    await client.post(f"/v1/tasks/{slow_id}/cancel")  # the native API stops a running task
    await poll(client, slow_id, "CANCELED")


# -- errors -------------------------------------------------------------------------------------------

BAD: dict[str, tuple[str, Any, int, str]] = {
    "no model": (SYNC, {"input": multimodal()["input"]}, 400, "BadRequest.EmptyModel"),
    "unknown model": (SYNC, multimodal("wanx-v1"), 404, "ModelNotFound"),
    "no input": (SYNC, {"model": "qwen-image"}, 400, "BadRequest.EmptyInput"),
    "no messages": (SYNC, {"model": "qwen-image", "input": {"messages": []}}, 400, "BadRequest.EmptyInput"),
    "two messages": (
        SYNC,
        {"model": "qwen-image", "input": {"messages": multimodal()["input"]["messages"] * 2}},
        400,
        "InvalidParameter",
    ),
    "assistant role": (
        SYNC,
        message("qwen-image", {"text": "a"}, role="assistant"),
        400,
        "InvalidParameter",
    ),
    "no text": (
        SYNC,
        message("qwen-image-edit", {"image": png_uri()}),
        400,
        "InvalidParameter",
    ),
    "two texts": (
        SYNC,
        message("qwen-image", {"text": "a"}, {"text": "b"}),
        400,
        "InvalidParameter",
    ),
    "empty item": (
        SYNC,
        message("qwen-image", {}, {"text": "b"}),
        400,
        "InvalidParameter",
    ),
    "image to text-to-image": (SYNC, multimodal(images=1), 400, "InvalidParameter"),
    "edit without image": (SYNC, multimodal("qwen-image-edit"), 400, "InvalidParameter"),
    "four images": (SYNC, multimodal("qwen-image-edit-plus", images=4), 400, "InvalidParameter"),
    "bad base64": (
        SYNC,
        message("qwen-image-edit", {"image": "data:image/png;base64,@@"}, {"text": "a"}),
        400,
        "InvalidParameter",
    ),
    "dead url": (
        SYNC,
        message("qwen-image-edit", {"image": "http://127.0.0.1:9/a.png"}, {"text": "a"}),
        400,
        "InvalidParameter",
    ),
    "empty prompt": (SYNC, multimodal(text="  "), 400, "InvalidParameter"),
    "801 characters": (SYNC, multimodal(text="x" * 801), 400, "InvalidParameter"),
    "negative 501": (SYNC, multimodal(negative_prompt="x" * 501), 400, "InvalidParameter"),
    "size garbage": (SYNC, multimodal(size="huge"), 400, "InvalidParameter"),
    "size too small": (SYNC, multimodal(size="100*100"), 400, "InvalidParameter"),
    "size too large": (SYNC, multimodal(size="4096*4096"), 400, "InvalidParameter"),
    "n 7": (SYNC, multimodal(n=7), 400, "InvalidParameter"),
    "n 0": (SYNC, multimodal(n=0), 400, "InvalidParameter"),
    "seed -1": (SYNC, multimodal(seed=-1), 400, "InvalidParameter"),
    "seed 2**31": (SYNC, multimodal(seed=2**31), 400, "InvalidParameter"),
    "n as text": (SYNC, multimodal(n="many"), 400, "InvalidParameter"),
    "steps 1": (SYNC, multimodal(num_inference_steps=1), 400, "InvalidParameter"),
    "async no prompt": (ASYNC, {"model": "qwen-image", "input": {}}, 400, "BadRequest.EmptyInput"),
    "async no model": (ASYNC, {"input": {"prompt": "a"}}, 400, "BadRequest.EmptyModel"),
    "async long prompt": (ASYNC, synthesis("x" * 801), 400, "InvalidParameter"),
    "async image to t2i": (
        ASYNC,
        {"model": "qwen-image", "input": {"prompt": "a", "images": [png_uri()]}},
        400,
        "InvalidParameter",
    ),
}


@pytest.mark.parametrize(
    ("body", "status"),
    [(multimodal("qwen-image-ultra"), 404), (multimodal(text=" "), 400), ({"model": "qwen-image"}, 400)],
)
async def test_pixazo_errors_have_pixazos_shape(client: httpx.AsyncClient, body: dict[str, Any], status: int) -> None:
    response = await client.post(PIXAZO, json=body, headers={"Ocp-Apim-Subscription-Key": "k"})
    assert response.status_code == status
    assert set(response.json()) == {"error"} and response.json()["error"]


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_requests_get_dashscope_errors_and_create_nothing(client: httpx.AsyncClient, case: str) -> None:
    path, body, status, code = BAD[case]
    assert_error(await client.post(path, json=body, headers=ASYNC_AUTH if path == ASYNC else AUTH), status, code)
    assert await native_tasks(client) == []


async def test_malformed_json_and_unknown_paths(client: httpx.AsyncClient) -> None:
    bad_json = await client.post(SYNC, content=b"{nope", headers={**AUTH, "content-type": "application/json"})
    assert_error(bad_json, 400, "InvalidParameter")
    assert_error(await client.post("/api/v1/services/aigc/nothing/here", json={}), 404, "NotFound")
    pixazo_unknown_path = await client.post("/qwen-image/v1/nothing", json={})
    assert pixazo_unknown_path.status_code == 404 and set(pixazo_unknown_path.json()) == {"error"}
    assert_error(await client.get(SYNC), 405, "UnsupportedOperation")
    # Outside DashScope's paths the native shape is kept.
    assert set((await client.get("/v1/tasks/nope")).json()) == {"error"}


async def test_an_unserved_model_is_not_found(tmp_path: Path, engine: Engine) -> None:
    service = await build(tmp_path, engine, models=(ModelName.QWEN_IMAGE,))
    async with service.running(), http_client(service) as client:
        response = await client.post(SYNC, json=multimodal("qwen-image-edit", images=1), headers=AUTH)
        assert_error(response, 404, "ModelNotFound")
        assert "not served here" in response.json()["message"]


async def test_a_sync_call_past_max_wait_is_408_and_its_task_canceled(tmp_path: Path, engine: Engine) -> None:
    service = await build(tmp_path, engine, max_wait_seconds=0.3)
    async with service.running(), http_client(service) as client:
        response = await client.post(SYNC, json=multimodal(num_inference_steps=200), headers=AUTH)
        assert_error(response, 408, "RequestTimeOut")
        [task] = await native_tasks(client)
        while task["status"] != "canceled":
            assert task["status"] in ("queued", "running"), task
            await asyncio.sleep(0.05)
            [task] = await native_tasks(client)


class FailingEngine:
    """A stand-in engine whose generations fail; the worker records the error on the task."""

    def load(self, model: ModelName) -> object:
        return None

    def warm_up(self) -> None:
        """Nothing to warm."""

    def is_loaded(self, model: ModelName) -> bool:
        return False  # so the API process leaves every check to the worker

    def validate(self, request: GenerationRequest) -> None:
        if "long" in request.prompt:
            raise PromptTooLong("prompt is 2000 tokens long; the limit is 1024 tokens", param="prompt")

    def render_batch(self, entries: Sequence[BatchEntry]) -> list[list[RenderedImage] | QwenImageError]:
        return [self._failure(entry.request) for entry in entries]

    def _failure(self, request: GenerationRequest) -> QwenImageError:
        try:
            self.validate(request)
        except QwenImageError as exc:
            return exc
        return GenerationFailed("CUDA out of memory")


@pytest.mark.parametrize(
    ("prompt", "status", "code", "message"),
    [
        ("fox", 500, "InternalError", "CUDA out of memory"),
        ("a long fox", 400, "InvalidParameter", "prompt is 2000 tokens long; the limit is 1024 tokens"),
    ],
)
async def test_a_failed_task_is_an_error_and_failed_in_the_task_api(
    tmp_path: Path, prompt: str, status: int, code: str, message: str
) -> None:
    service = await build(tmp_path, FailingEngine())
    async with service.running(), http_client(service) as client:
        assert_error(await client.post(SYNC, json=multimodal(text=prompt), headers=AUTH), status, code, message)
        created = await client.post(ASYNC, json=synthesis(prompt, n=3), headers=ASYNC_AUTH)
        failed = await poll(client, created.json()["output"]["task_id"], "FAILED", "SUCCEEDED")
        output = failed["output"]
        assert "usage" not in failed and "results" not in output
        assert (output["task_status"], output["code"], output["message"]) == ("FAILED", code, message)
        assert output["task_metrics"] == {"TOTAL": 3, "SUCCEEDED": 0, "FAILED": 3}
        assert TIME.match(output["end_time"])


# -- pure translation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1328*1328", (1328, 1328)), ("1472*1140", (1472, 1140)), ("1140*1472", (1140, 1472)),
     ("1664*928", (1664, 928)), (" 1024 x 768 ", (1024, 768)), ("256*2048", (256, 2048))],
)  # fmt: skip
def test_sizes_are_kept_as_asked(size: str, expected: tuple[int, int]) -> None:
    assert dashscope_size(size) == expected


@pytest.mark.parametrize("size", ["huge", "1024", "100*100", "1024*2100", "-5*300", "250*2050"])
def test_bad_sizes(size: str) -> None:
    with pytest.raises(InvalidParameter, match="size"):
        dashscope_size(size)


@pytest.mark.parametrize(
    ("name", "images", "model"),
    [
        ("qwen-image", 0, ModelName.QWEN_IMAGE),
        ("qwen-image-plus", 0, ModelName.QWEN_IMAGE),
        ("qwen-image-edit", 1, ModelName.QWEN_IMAGE_EDIT),
        ("qwen-image-edit", 2, ModelName.QWEN_IMAGE_EDIT_PLUS),
        ("qwen-image-edit", 3, ModelName.QWEN_IMAGE_EDIT_PLUS),
        ("qwen-image-edit-plus", 1, ModelName.QWEN_IMAGE_EDIT_PLUS),
    ],
)
def test_model_names(name: str, images: int, model: ModelName) -> None:
    assert resolve_model(name, images) is model


def test_times_are_dashscope_format_in_utc() -> None:
    beijing = timezone(timedelta(hours=8))
    assert dashscope_time(datetime(2025, 1, 8, 16, 3, 59, 840999, tzinfo=UTC)) == "2025-01-08 16:03:59.840"
    assert dashscope_time(datetime(2025, 1, 9, 0, 3, 59, 5000, tzinfo=beijing)) == "2025-01-08 16:03:59.005"
    assert dashscope_time(None) is None


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidRequest("bad"), 400, "InvalidParameter"),
        (InvalidImage("bad"), 400, "InvalidParameter"),
        (TaskNotFound("gone"), 404, "NotFound"),
        (TaskConflict("done"), 400, "UnsupportedOperation"),
        (UnknownModel("who"), 404, "ModelNotFound"),
        (CheckpointUnavailable("no weights"), 503, "ServiceUnavailable"),
        (GenerationFailed("boom"), 500, "InternalError"),
        (QwenImageError("crash"), 500, "InternalError"),
        (DashScopeError(429, "Throttling", "slow down"), 429, "Throttling"),
    ],
)
def test_our_errors_in_dashscope_codes(error: QwenImageError, status: int, code: str) -> None:
    assert status_and_code(error) == (status, code)


def test_an_edit_without_size_keeps_the_last_input_aspect_at_one_megapixel() -> None:
    first, last = png_uri((300, 200)), png_uri((96, 64))
    body = MultimodalBody.model_validate(  # no parameters at all
        message("qwen-image-edit", {"image": first}, {"text": "the two"}, {"image": last})
    )
    ask = multimodal_ask(body)
    assert ask.image_refs == (first, last) and ask.prompt == "the two" and ask.negative_prompt is None
    request = to_generation_request(ask, (picture_bytes((300, 200)), picture_bytes((96, 64))))
    assert request.model is ModelName.QWEN_IMAGE_EDIT_PLUS
    assert abs(request.width / request.height - 1.5) < 0.02
    assert 0.9e6 < request.width * request.height < 1.15e6
    assert request.max_sequence_length == 1024 and request.num_images_per_prompt == 1
