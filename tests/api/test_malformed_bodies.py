"""Bodies no parser should see: JSON nested so deep that Python's parser would recurse past its
limit. Every dialect's create endpoint refuses them with 400 (kie: its 200 envelope with code 422;
fal and Replicate: 422, their providers' status for input they cannot take) in its own error shape,
instead of a crash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from qwen_image_server.api.limits import MAX_JSON_DEPTH, nests_deeper_than
from tests.api.conftest import TINY_TASK

pytestmark = pytest.mark.anyio


def _native(body: dict[str, Any]) -> str:
    return str(body["error"]["message"])


def _openai(body: dict[str, Any]) -> str:
    assert body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


def _dashscope(body: dict[str, Any]) -> str:
    assert body["code"] == "InvalidParameter"
    return str(body["message"])


def _pixazo(body: dict[str, Any]) -> str:
    return str(body["error"])


def _novita(body: dict[str, Any]) -> str:
    assert body["code"] == 400
    return str(body["message"])


def _kie(body: dict[str, Any]) -> str:
    assert body["code"] == 422
    return str(body["msg"])


def _pixwith(body: dict[str, Any]) -> str:
    assert body["code"] == 0
    return str(body["message"])


def _fal(body: dict[str, Any]) -> str:
    [error] = body["detail"]  # fal's validation error, a pydantic-style list
    return str(error["msg"])


def _replicate(body: dict[str, Any]) -> str:
    assert body["status"] == 422 and body["title"]  # Replicate's problem+json
    return str(body["detail"])


DIALECTS: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
    ("/v1/tasks", 400, _native),
    ("/v1/images/generations", 400, _openai),
    ("/api/v1/services/aigc/text2image/image-synthesis", 400, _dashscope),
    ("/api/v1/services/aigc/multimodal-generation/generation", 400, _dashscope),
    ("/qwen-image/v1/generateMultimodeTextToImageRequest", 400, _pixazo),
    ("/v3/async/qwen-image-txt2img", 400, _novita),
    ("/v3/async/qwen-image-edit", 400, _novita),
    ("/api/v1/jobs/createTask", 200, _kie),  # kie.ai answers every error with 200
    ("/api/task/create", 400, _pixwith),
    # fal and Replicate answer a body they cannot take with 422, as their providers validate input
    ("/fal-ai/qwen-image", 422, _fal),
    ("/run/fal-ai/qwen-image", 422, _fal),
    ("/v1/predictions", 422, _replicate),
    ("/v1/models/qwen/qwen-image/predictions", 422, _replicate),
]
DEEP = {
    "arrays": "[" * 1000 + "]" * 1000,
    "objects": '{"a":' * 1000 + "1" + "}" * 1000,
    "inside a field": '{"prompt": "fox", "extra": ' + "[" * 1000 + "]" * 1000 + "}",
}


@pytest.mark.parametrize("body", DEEP.values(), ids=DEEP.keys())
@pytest.mark.parametrize(("path", "status", "message_of"), DIALECTS, ids=[path for path, _, _ in DIALECTS])
async def test_deeply_nested_json_is_refused_in_the_dialects_shape(
    api: httpx.AsyncClient, path: str, status: int, message_of: Callable[[dict[str, Any]], str], body: str
) -> None:
    response = await api.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert "nests more than 64 levels deep" in message_of(response.json())


async def test_a_body_without_content_type_is_checked_too(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/tasks", content="[" * 1000 + "]" * 1000)  # FastAPI parses it as JSON
    assert response.status_code == 400


async def test_ordinary_requests_pass(api: httpx.AsyncClient) -> None:
    brackets_in_text = {**TINY_TASK, "prompt": 'a sign that says "[[[[{{{{" ' + "[" * 200}
    assert (await api.post("/v1/tasks", json=brackets_in_text)).status_code == 202


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
        (b'["' + b"[" * 100 + b'"]', False),  # inside a string
        (b'["\\"' + b"[" * 100 + b'"]', False),  # after an escaped quote, still inside the string
        (b'["\\\\"' + b"[" * 100, True),  # an escaped backslash ends before the quote: outside
        (b"[]" * 1000, False),  # long but shallow
        (b"]" + b"[" * 100, False),  # not JSON: left to the parser
    ],
)
def test_nesting_depth(text: bytes, deeper: bool) -> None:
    assert nests_deeper_than(text, MAX_JSON_DEPTH) is deeper
