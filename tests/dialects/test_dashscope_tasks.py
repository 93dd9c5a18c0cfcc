"""DashScope's task list (`GET /api/v1/tasks`, the SDK's `ImageSynthesis.list`), its error shape on
every path under /api/v1/, and the providers' dated model names. The service runs no worker, so
tasks stay PENDING and nothing is generated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_image_server.api.dashscope.translate import resolve_model
from qwen_image_server.api.errors import native_error, renderer_by_path
from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.errors import InvalidRequest
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.keys import Scope
from tests.api.conftest import FAST_SERVICE
from tests.conftest import TINY_EVERYWHERE, asgi_client

pytestmark = pytest.mark.anyio

ASYNC = "/api/v1/services/aigc/text2image/image-synthesis"
TASKS = "/api/v1/tasks"


@pytest.fixture
async def service(tmp_path: Path, engine: Engine) -> AsyncIterator[Service]:
    settings = Settings(**{**TINY_EVERYWHERE, **FAST_SERVICE, "data_dir": tmp_path / "data"})
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running():
        yield service


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(service) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(client: httpx.AsyncClient, token: str, model: str = "qwen-image", prompt: str = "fox") -> str:
    body = {"model": model, "input": {"prompt": prompt}, "parameters": {"size": "256*256"}}
    response = await client.post(ASYNC, json=body, headers={**auth(token), "X-DashScope-Async": "enable"})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["output"]["task_id"]
    return task_id


async def listed(client: httpx.AsyncClient, token: str, **query: Any) -> dict[str, Any]:
    response = await client.get(TASKS, params=query, headers=auth(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_list_has_dashscopes_shape_and_only_the_callers_tasks(
    client: httpx.AsyncClient, service: Service
) -> None:
    key, alice = await service.keys.create("alice")
    _, bob = await service.keys.create("bob")
    mine = [await create(client, alice, prompt=f"fox {i}") for i in range(3)]
    await create(client, bob)
    body = await listed(client, alice)
    assert set(body) == {"request_id", "data", "total", "total_page", "page_no", "page_size"}
    assert (body["total"], body["total_page"], body["page_no"], body["page_size"]) == (3, 1, 1, 10)
    assert [item["task_id"] for item in body["data"]] == mine[::-1]  # newest first
    item = body["data"][0]
    assert item["status"] == "PENDING" and item["model_name"] == "qwen-image" and item["api_key_id"] == key.id
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert abs(item["gmt_create"] - now_ms) < 60_000


async def test_paging(client: httpx.AsyncClient, service: Service) -> None:
    _, token = await service.keys.create("pager")
    made = [await create(client, token, prompt=f"fox {i}") for i in range(5)][::-1]
    first = await listed(client, token, page_no=1, page_size=2)
    third = await listed(client, token, page_no=3, page_size=2)
    beyond = await listed(client, token, page_no=4, page_size=2)
    assert [item["task_id"] for item in first["data"]] == made[:2]
    assert [item["task_id"] for item in third["data"]] == made[4:]
    assert beyond["data"] == [] and (beyond["total"], beyond["total_page"]) == (5, 3)


async def test_filters(client: httpx.AsyncClient, service: Service) -> None:
    _, token = await service.keys.create("filters")
    text = await create(client, token)
    await service.store.request_cancel(canceled := await create(client, token))
    assert [i["task_id"] for i in (await listed(client, token, status="CANCELED"))["data"]] == [canceled]
    assert [i["task_id"] for i in (await listed(client, token, status="PENDING"))["data"]] == [text]
    assert (await listed(client, token, model_name="qwen-image-plus"))["total"] == 2
    assert (await listed(client, token, model_name="qwen-image-edit"))["total"] == 0
    hour = timedelta(hours=1)
    now = datetime.now(UTC)
    window = {"start_time": f"{now - hour:%Y%m%d%H%M%S}", "end_time": f"{now + hour:%Y%m%d%H%M%S}"}
    assert (await listed(client, token, **window))["total"] == 2
    assert (await listed(client, token, end_time=f"{now - hour:%Y%m%d%H%M%S}"))["total"] == 0
    assert (await listed(client, token, start_time=f"{now + hour:%Y%m%d%H%M%S}"))["total"] == 0
    assert (await listed(client, token, task_id=text))["total"] == 1


@pytest.mark.parametrize(
    "query",
    [{"page_size": 0}, {"page_size": 101}, {"page_no": 0}, {"page_no": "x"}, {"status": "DONE"},
     {"start_time": "2025-01-01"}, {"end_time": "20251399000000"}],
)  # fmt: skip
async def test_bad_list_queries_are_dashscope_errors(client: httpx.AsyncClient, query: dict[str, Any]) -> None:
    response = await client.get(TASKS, params=query)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"code", "message", "request_id"} and body["code"] == "InvalidParameter"
    assert next(iter(query)) in body["message"]


async def test_every_path_under_api_v1_answers_in_dashscopes_shape(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/nothing", "/api/v1/services/nothing", "/api/v1/tasks/x/nothing"):
        response = await client.get(path)
        assert response.status_code == 404 and set(response.json()) == {"code", "message", "request_id"}, path
        assert response.json()["code"] == "NotFound"
    kie = await client.get("/api/v1/jobs/nothing")  # kie owns its own part of /api/v1/
    assert set(kie.json()) == {"code", "msg", "data"} and kie.json()["code"] == 404


def test_the_longest_matching_prefix_chooses_the_renderer() -> None:
    def shape(name: str) -> Any:
        return lambda exc: native_error(InvalidRequest(name))

    render = renderer_by_path({"/api/v1/": shape("outer"), "/api/v1/jobs/": shape("inner"), "/x/": shape("x")})
    error = InvalidRequest("?")
    assert b"inner" in bytes(render("/api/v1/jobs/createTask", error).body)
    assert b"outer" in bytes(render("/api/v1/tasks", error).body)
    assert b"?" in bytes(render("/v1/tasks", error).body)


@pytest.mark.parametrize(
    ("name", "images", "model"),
    [
        ("qwen-image-2025-08-04", 0, ModelName.QWEN_IMAGE),
        ("qwen-image-plus-2026-01-09", 0, ModelName.QWEN_IMAGE),
        ("qwen-image-max", 0, ModelName.QWEN_IMAGE),
        ("qwen-image-max-2025-12-30", 0, ModelName.QWEN_IMAGE),
        ("qwen-image-edit-2025-08-18", 1, ModelName.QWEN_IMAGE_EDIT),
        ("qwen-image-edit-plus-2025-10-30", 1, ModelName.QWEN_IMAGE_EDIT_PLUS),
        ("qwen-image-edit-plus-2025-12-15", 2, ModelName.QWEN_IMAGE_EDIT_PLUS),
    ],
)
def test_dated_model_names(name: str, images: int, model: ModelName) -> None:
    assert resolve_model(name, images) is model


@pytest.mark.parametrize(
    "name", ["qwen-image-2025-13-01", "qwen-image-20250804", "qwen-image-ultra-2025-08-04", "qwen-image-plus-latest"]
)
async def test_names_not_following_the_rule_are_not_found(client: httpx.AsyncClient, name: str) -> None:
    body = {"model": name, "input": {"prompt": "fox"}}
    response = await client.post(ASYNC, json=body, headers={"X-DashScope-Async": "enable"})
    assert response.status_code == 404 and response.json()["code"] == "ModelNotFound"
    assert "YYYY-MM-DD" in response.json()["message"]


async def test_dated_names_on_the_wire_and_pixazo(client: httpx.AsyncClient) -> None:
    await create(client, "sk-any", model="qwen-image-plus-2026-01-09")
    body = {"model": "qwen-image-edit-plus-2025-10-30", "input": {"messages": [{"role": "user", "content": "x"}]}}
    pixazo = await client.post("/qwen-image/v1/generateMultimodeTextToImageRequest", json=body)
    # Known model: refused for its missing input image (400), not as an unknown model (404).
    assert pixazo.status_code == 400 and set(pixazo.json()) == {"error"}


async def test_api_key_id_filters_by_the_key_that_made_the_task(service: Service, client: httpx.AsyncClient) -> None:
    _, admin = await service.keys.create("ops", (Scope.ADMIN, Scope.READ, Scope.GENERATE))
    alice_key, alice = await service.keys.create("alice")
    bob_key, bob = await service.keys.create("bob")
    for token in (alice, bob, bob):
        await create(client, token)
    bobs = await listed(client, admin, api_key_id=bob_key.id)
    assert bobs["total"] == 2 and {item["api_key_id"] for item in bobs["data"]} == {bob_key.id}
    assert (await listed(client, alice, api_key_id=bob_key.id))["total"] == 0, "a key sees only its own"
    assert (await listed(client, alice, api_key_id=alice_key.id))["total"] == 1
    assert (await listed(client, admin))["total"] == 3
