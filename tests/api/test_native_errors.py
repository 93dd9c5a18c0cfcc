"""Malformed requests get 4xx in the native error shape; nothing is created, nothing gets stuck."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client, picture_bytes

pytestmark = pytest.mark.anyio
PNG = base64.b64encode(picture_bytes()).decode()
DEAD_LOOPBACK_URL = "http://127.0.0.1:9/none.png"  # port 9 (discard): nothing answers


def assert_native_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


BAD_BODIES: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "unknown model": ({**TINY_TASK, "model": "dall-e-3"}, "invalid_parameter", "model"),
    "width 100": ({**TINY_TASK, "size": None, "width": 100, "height": 256}, "invalid_parameter", "width"),
    "size garbage": ({**TINY_TASK, "size": "huge"}, "invalid_parameter", "size"),
    "steps as text": ({**TINY_TASK, "num_inference_steps": "many"}, "invalid_request", "num_inference_steps"),
    "no prompt": ({"model": "qwen-image"}, "invalid_request", "prompt"),
    "unknown field": ({**TINY_TASK, "colour": "red"}, "invalid_request", "colour"),
    "five images": ({**TINY_TASK, "model": "qwen-image-edit-plus", "images": [PNG] * 5}, "invalid_parameter", "images"),
    "four images": ({**TINY_TASK, "model": "qwen-image-edit-plus", "images": [PNG] * 4}, "invalid_parameter", "images"),
    "bad base64": (
        {**TINY_TASK, "model": "qwen-image-edit", "images": ["@@not-base64@@"]},
        "invalid_image",
        "images[0]",
    ),
    "not an image": (
        {**TINY_TASK, "model": "qwen-image-edit", "images": [base64.b64encode(b"hello").decode()]},
        "invalid_image",
        "images[0]",
    ),
    "text data url": (  # a picture labelled text/plain: the label is a mistake worth saying so
        {**TINY_TASK, "model": "qwen-image-edit", "images": [f"data:text/plain;base64,{PNG}"]},
        "invalid_image",
        "images[0]",
    ),
    "loopback url": (  # refused before any connection: not a public address (not allow-listed here)
        {**TINY_TASK, "model": "qwen-image-edit", "images": [DEAD_LOOPBACK_URL]},
        "url_not_allowed",
        "images[0]",
    ),
    "two images to qwen-image": ({**TINY_TASK, "images": [PNG, PNG]}, "invalid_parameter", "images"),
    "strength without an image": ({**TINY_TASK, "strength": 0.5}, "invalid_parameter", "strength"),
    "strength 0": ({**TINY_TASK, "images": [PNG], "strength": 0}, "invalid_parameter", "strength"),
    "strength above 1": ({**TINY_TASK, "images": [PNG], "strength": 1.5}, "invalid_parameter", "strength"),
    "strength on an edit": (
        {**TINY_TASK, "model": "qwen-image-edit", "images": [PNG], "strength": 0.5},
        "invalid_parameter",
        "strength",
    ),
    "long prompt": ({**TINY_TASK, "prompt": "fox " * 600}, "prompt_too_long", "prompt"),
    "seed negative": ({**TINY_TASK, "seed": -5}, "invalid_parameter", "seed"),
    "acceleration max": ({**TINY_TASK, "acceleration": "max"}, "invalid_parameter", "acceleration"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_bodies_are_400_and_create_nothing(client: httpx.AsyncClient, case: str) -> None:
    body, code, param = BAD_BODIES[case]
    response = await client.post("/v1/tasks", json=body)
    assert_native_error(response, 400, code, param)
    assert (await client.get("/v1/tasks")).json()["data"] == []


async def test_an_allow_listed_dead_url_is_unavailable(tmp_path: Path) -> None:
    settings = Settings(
        **TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", allowed_fetch_networks="127.0.0.0/8"
    )
    body = {**TINY_TASK, "model": "qwen-image-edit", "images": [DEAD_LOOPBACK_URL]}
    async with Service.build(settings, run_worker=False).running() as service, asgi_client(service) as client:
        assert_native_error(await client.post("/v1/tasks", json=body), 400, "image_unavailable", "images[0]")


async def test_a_level_this_server_cannot_run_is_refused_naming_acceleration(tmp_path: Path) -> None:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", compile=True)
    async with Service.build(settings, run_worker=False).running() as service, asgi_client(service) as client:
        refused = await client.post("/v1/tasks", json={**TINY_TASK, "acceleration": "high"})
        assert_native_error(refused, 400, "invalid_parameter", "acceleration")
        assert "compile" in refused.json()["error"]["message"]
        assert (await client.get("/v1/tasks")).json()["data"] == []


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"})
    assert_native_error(response, 400, "invalid_request")


async def test_a_bad_wait_is_400(client: httpx.AsyncClient) -> None:
    assert_native_error(await client.post("/v1/tasks?wait=soon", json=TINY_TASK), 400, "invalid_parameter", "wait")


async def test_unknown_task_and_route_are_404(client: httpx.AsyncClient) -> None:
    assert_native_error(await client.get("/v1/tasks/task_nope"), 404, "task_not_found")
    assert_native_error(await client.post("/v1/tasks/task_nope/cancel"), 404, "task_not_found")
    assert_native_error(await client.get("/v1/nothing-here"), 404, "not_found")
    assert_native_error(await client.delete("/v1/tasks"), 405, "method_not_allowed")


async def test_bad_list_parameters_are_400(client: httpx.AsyncClient) -> None:
    # Values outside what a parameter allows are `invalid_parameter`, as the domain's own checks say.
    sleeping = await client.get("/v1/tasks", params={"status": "sleeping"})
    assert_native_error(sleeping, 400, "invalid_parameter", "status")
    assert_native_error(await client.get("/v1/tasks", params={"limit": 0}), 400, "invalid_parameter", "limit")
    assert_native_error(await client.get("/v1/tasks", params={"limit": "ten"}), 400, "invalid_request", "limit")


async def _finished_result_url(client: httpx.AsyncClient) -> str:
    task = (await client.post("/v1/tasks?wait=60", json=TINY_TASK)).json()
    parts = urlsplit(task["results"][0]["url"])
    return f"{parts.path}?{parts.query}"


async def test_result_urls_refuse_bad_signatures(client: httpx.AsyncClient) -> None:
    url = await _finished_result_url(client)
    assert (await client.get(url)).status_code == 200
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert_native_error(await client.get(tampered), 403, "invalid_signature")
    assert_native_error(await client.get(url.split("?")[0]), 403, "invalid_signature")
    other_image = url.replace("/0.png", "/1.png")
    assert_native_error(await client.get(other_image), 403, "invalid_signature")


async def test_expired_result_urls_are_410(client: httpx.AsyncClient, service: Service) -> None:
    url = await _finished_result_url(client)
    key = url.split("?")[0].removeprefix("/v1/results/")
    old = service.signer.sign(key, now=datetime.now(UTC) - timedelta(days=2))
    assert_native_error(await client.get(old.path), 410, "result_expired")


async def test_traversal_in_result_paths_is_refused(client: httpx.AsyncClient) -> None:
    for path in ("/v1/results/..%2F..%2Fetc/passwd", "/v1/results/task_00/..%2Furl-secret", "/v1/results/a/b.png"):
        response = await client.get(path + "?expires=9999999999&sig=x")
        assert response.status_code in (403, 404), path
        assert "error" in response.json()


async def test_result_images_are_cacheable(client: httpx.AsyncClient) -> None:
    url = await _finished_result_url(client)
    first = await client.get(url)
    assert "max-age" in first.headers["cache-control"]
    again = await client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
