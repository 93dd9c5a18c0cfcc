"""Alibaba's own `dashscope` SDK, unchanged but for its base URL, against a live server: the async
task calls (`ImageSynthesis.async_call` / `wait` / `fetch` / `cancel`) and the synchronous
`MultiModalConversation.call`, for text-to-image and editing. Also: a synchronous call whose client
hangs up has its task canceled."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer, picture_bytes

dashscope = pytest.importorskip("dashscope")

KEY = "sk-test"
FAST: dict[str, Any] = {"size": "256*256", "num_inference_steps": 2}  # num_inference_steps: our extension


@pytest.fixture
def sdk(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{live_server.url}/api/v1")
    yield dashscope


def fetch_png(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def native_tasks(live_server: LiveServer) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{live_server.url}/v1/tasks", timeout=30).json()["data"]
    return data


def test_image_synthesis_async_call_wait_fetch(sdk: Any) -> None:
    created = sdk.ImageSynthesis.async_call(
        model="qwen-image", prompt="a red fox in snow", negative_prompt="blurry", n=2, seed=3, api_key=KEY, **FAST
    )
    assert created.status_code == 200, created
    assert created.output.task_status == "PENDING" and created.output.task_id
    assert created.request_id

    done = sdk.ImageSynthesis.wait(created, api_key=KEY)
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED", done
    assert [result.orig_prompt for result in done.output.results] == ["a red fox in snow"] * 2
    assert all(result.actual_prompt for result in done.output.results), "extended: prompt_extend is on by default"
    assert done.usage.image_count == 2
    for result in done.output.results:
        assert fetch_png(result.url).size == (256, 256)

    fetched = sdk.ImageSynthesis.fetch(created.output.task_id, api_key=KEY)
    assert fetched.output.task_status == "SUCCEEDED"
    assert [result.url for result in fetched.output.results] == [result.url for result in done.output.results]


def test_image_synthesis_cancel_and_unknown_tasks(sdk: Any, live_server: LiveServer) -> None:
    slow = sdk.ImageSynthesis.async_call(model="qwen-image", prompt="fox", api_key=KEY, size="256*256",
                                         num_inference_steps=250)  # fmt: skip
    pending = sdk.ImageSynthesis.async_call(model="qwen-image", prompt="fox", api_key=KEY, **FAST)
    canceled = sdk.ImageSynthesis.cancel(pending, api_key=KEY)
    assert canceled.status_code == 200, canceled
    assert sdk.ImageSynthesis.fetch(pending, api_key=KEY).output.task_status == "CANCELED"

    refused = sdk.ImageSynthesis.cancel(pending, api_key=KEY)
    assert (refused.status_code, refused.code) == (400, "UnsupportedOperation")
    assert "PENDING" in refused.message and refused.request_id

    unknown = sdk.ImageSynthesis.wait("no-such-task", api_key=KEY)  # UNKNOWN ends the wait at once
    assert unknown.status_code == 200 and unknown.output.task_status == "UNKNOWN"
    httpx.post(f"{live_server.url}/v1/tasks/{slow.output.task_id}/cancel", timeout=30)


def test_multimodal_conversation_text_to_image(sdk: Any) -> None:
    messages = [{"role": "user", "content": [{"text": "a lighthouse at dawn"}]}]
    answer = sdk.MultiModalConversation.call(
        model="qwen-image", messages=messages, api_key=KEY, watermark=False, prompt_extend=True, **FAST
    )
    assert answer.status_code == 200, answer
    [choice] = answer.output.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    [item] = choice.message.content
    assert fetch_png(item["image"]).size == (256, 256)
    assert (answer.usage.width, answer.usage.height, answer.usage.image_count) == (256, 256, 1)


def test_multimodal_conversation_edit_with_a_data_uri(sdk: Any) -> None:
    uri = "data:image/png;base64," + base64.b64encode(picture_bytes((96, 64))).decode()
    messages = [{"role": "user", "content": [{"image": uri}, {"text": "make it blue"}]}]
    answer = sdk.MultiModalConversation.call(model="qwen-image-edit", messages=messages, api_key=KEY, **FAST)
    assert answer.status_code == 200, answer
    [item] = answer.output.choices[0].message.content
    assert fetch_png(item["image"]).size == (256, 256)


def test_sdk_errors_carry_dashscope_codes(sdk: Any) -> None:
    messages = [{"role": "user", "content": [{"text": "fox"}]}]
    missing = sdk.MultiModalConversation.call(model="qwen-image-ultra", messages=messages, api_key=KEY)
    assert (missing.status_code, missing.code) == (404, "ModelNotFound")
    too_long = sdk.ImageSynthesis.async_call(model="qwen-image", prompt="x" * 801, api_key=KEY)
    assert (too_long.status_code, too_long.code) == (400, "InvalidParameter")
    assert "800" in too_long.message


def test_a_sync_call_whose_client_hangs_up_is_canceled(live_server: LiveServer) -> None:
    body = json.dumps(
        {
            "model": "qwen-image",
            "input": {"messages": [{"role": "user", "content": [{"text": "a slow fox"}]}]},
            "parameters": {"size": "256*256", "num_inference_steps": 250},
        }
    ).encode()
    head = (
        "POST /api/v1/services/aigc/multimodal-generation/generation HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{live_server.port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=30) as connection:
        connection.sendall(head + body)
        deadline = time.monotonic() + 60
        while not any(task["request"]["prompt"] == "a slow fox" for task in native_tasks(live_server)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while True:
        [task] = [task for task in native_tasks(live_server) if task["request"]["prompt"] == "a slow fox"]
        if task["status"] == "canceled":
            break
        assert task["status"] in ("queued", "running") and time.monotonic() < deadline, task
        time.sleep(0.1)
    assert task["progress"]["step"] < 250


def test_image_synthesis_list(sdk: Any) -> None:
    created = sdk.ImageSynthesis.async_call(model="qwen-image-plus-2026-01-09", prompt="a listed fox", api_key=KEY,
                                            **FAST)  # fmt: skip
    assert created.status_code == 200, created
    sdk.ImageSynthesis.wait(created, api_key=KEY)
    listed = sdk.ImageSynthesis.list(status="SUCCEEDED", model_name="qwen-image-plus", page_size=100, api_key=KEY)
    assert listed.status_code == 200 and listed.request_id, listed
    ids = [item["task_id"] for item in listed.output["data"]]
    assert created.output.task_id in ids
    assert listed.output["total"] == len(ids) and listed.output["page_no"] == 1
    refused = sdk.ImageSynthesis.list(page_size=1000, api_key=KEY)
    assert (refused.status_code, refused.code) == (400, "InvalidParameter") and "page_size" in refused.message
