"""A wrong method gets 405 with an `Allow` header naming every method the path serves (RFC 9110),
in each dialect, on paths with and without parameters."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/tasks", "GET, POST"),  # two routes share the path
        ("DELETE", "/v1/tasks/task-123", "GET"),
        ("GET", "/v1/tasks/task-123/cancel", "POST"),
        ("OPTIONS", "/v1/tasks/task-123/events", "GET"),
        ("PUT", "/v1/images/generations", "POST"),
        ("GET", "/v1/images/edits", "POST"),
        ("DELETE", "/api/v1/tasks/task-123", "GET"),
        ("GET", "/api/v1/services/aigc/text2image/image-synthesis", "POST"),
        ("GET", "/v3/async/qwen-image-txt2img", "POST"),
        ("POST", "/v3/async/task-result", "GET"),
        ("GET", "/api/task/create", "POST"),
        ("PATCH", "/v1/results/task-123/0.png", "GET, HEAD"),
    ],
)
async def test_405_names_the_allowed_methods(api: httpx.AsyncClient, method: str, path: str, allowed: str) -> None:
    response = await api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


async def test_kie_keeps_its_200_envelope_and_still_says_what_is_allowed(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/jobs/createTask")
    assert response.status_code == 200
    assert response.headers["allow"] == "POST"
