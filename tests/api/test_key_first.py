"""The API key is checked before the body is read: a bad key is 401 whatever the body, and the body
is never received (api/key_first.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from qwen_image_server.api import dashscope, fal, kie, novita, openai, pixwith, replicate
from qwen_image_server.api.dialect import Dialect, Unauthorized
from qwen_image_server.service import Service
from tests.api.conftest import TINY_TASK

pytestmark = pytest.mark.anyio

# (path, header, value with a bad key, the dialect that renders its errors; None: native)
CREATE_ENDPOINTS: list[tuple[str, str, str, Dialect | None]] = [
    ("/v1/tasks", "Authorization", "Bearer sk-wrong", None),
    ("/v1/images/generations", "Authorization", "Bearer sk-wrong", openai.DIALECT),
    ("/v1/images/edits", "Authorization", "Bearer sk-wrong", openai.DIALECT),
    ("/api/v1/services/aigc/multimodal-generation/generation", "Authorization", "Bearer sk-wrong", dashscope.DIALECT),
    ("/api/v1/services/aigc/text2image/image-synthesis", "Authorization", "Bearer sk-wrong", dashscope.DIALECT),
    ("/qwen-image/v1/generateMultimodeTextToImageRequest", "Ocp-Apim-Subscription-Key", "wrong", dashscope.PIXAZO),
    ("/v3/async/qwen-image-txt2img", "Authorization", "Bearer wrong", novita.DIALECT),
    ("/api/v1/jobs/createTask", "Authorization", "Bearer wrong", kie.DIALECT),
    ("/api/task/create", "Api-Key", "wrong", pixwith.DIALECT),
    ("/fal-ai/qwen-image", "Authorization", "Key wrong", fal.DIALECT),
    ("/run/fal-ai/qwen-image-edit", "Authorization", "Key wrong", fal.DIALECT),
    ("/v1/predictions", "Authorization", "Bearer wrong", replicate.DIALECT),
    ("/v1/models/qwen/qwen-image/predictions", "Authorization", "Bearer wrong", replicate.DIALECT),
]


@pytest.fixture
async def keyed(api_service: Service, api: httpx.AsyncClient) -> tuple[Service, httpx.AsyncClient, str]:
    _, secret = await api_service.keys.create("alice")
    return api_service, api, secret


class CountingBody:
    """A request body that records how much of it the server asked for."""

    def __init__(self, chunks: int = 64, size: int = 64 * 1024) -> None:
        self.chunks, self.size, self.sent = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.sent += 1
            yield b"x" * self.size


@pytest.mark.parametrize(("path", "header", "bad_key", "dialect"), CREATE_ENDPOINTS)
async def test_a_bad_key_is_refused_before_the_body_is_read(
    keyed: tuple[Service, httpx.AsyncClient, str], path: str, header: str, bad_key: str, dialect: Dialect | None
) -> None:
    _, client, _ = keyed
    body = CountingBody()
    answer = await client.post(path, content=body, headers={header: bad_key, "Content-Type": "application/json"})
    assert_unauthorized(answer, dialect)
    assert body.sent <= 1, f"the server read {body.sent} chunks of a body it refused"
    assert answer.headers["connection"] == "close"


@pytest.mark.parametrize(("path", "header", "bad_key", "dialect"), CREATE_ENDPOINTS)
async def test_no_key_and_a_junk_body_is_401_not_400(
    keyed: tuple[Service, httpx.AsyncClient, str], path: str, header: str, bad_key: str, dialect: Dialect | None
) -> None:
    _, client, _ = keyed
    answer = await client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert_unauthorized(answer, dialect)


def assert_unauthorized(answer: httpx.Response, dialect: Dialect | None) -> None:
    """401 in the dialect's own shape (kie answers HTTP 200 with `code: 401` in its envelope)."""
    if dialect is None:
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "invalid_api_key"
        return
    expected = dialect.render_error(Unauthorized("x"))
    assert answer.status_code == expected.status_code, answer.text
    assert json.loads(expected.body).keys() == answer.json().keys()
    assert "401" in answer.text or "nvalid" in answer.text or "API key" in answer.text


async def test_a_good_key_still_gets_its_body_read(keyed: tuple[Service, httpx.AsyncClient, str]) -> None:
    _, client, secret = keyed
    good = {"Authorization": f"Bearer {secret}"}
    assert (await client.post("/v1/tasks", json=TINY_TASK, headers=good)).status_code == 202
    junk = await client.post("/v1/tasks", content=b"{not json", headers={**good, "Content-Type": "application/json"})
    assert junk.status_code == 400, "with a good key, a bad body is the caller's next problem"


async def test_an_open_server_reads_bodies_without_keys(api: httpx.AsyncClient) -> None:
    answer = await api.post("/v1/tasks", json=TINY_TASK, headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 202
