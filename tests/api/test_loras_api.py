"""Per-request adapters and Lightning through the APIs: native `loras`, kie's fal-style `loras`, errors
in each dialect's shape, and a URL adapter downloaded by the worker (real service, tiny model)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK, wait_until
from tests.api.test_native_errors import assert_native_error
from tests.conftest import TINY_EVERYWHERE, asgi_client
from tests.dialects.test_kie import AUTH, CREATE, assert_envelope, poll_until_done, tiny_t2i

pytestmark = pytest.mark.anyio


@pytest.fixture
async def service(tmp_path: Path, lora_file: Path) -> AsyncIterator[Service]:
    settings = Settings(
        **TINY_EVERYWHERE,
        **FAST_SERVICE,
        data_dir=tmp_path / "data",
        request_loras=f"style={lora_file}:0.7",
        lightning_loras=f"qwen-image={lora_file}",
        lightning_steps=4,
        allowed_fetch_networks="127.0.0.0/8",
    )
    service = Service.build(settings, engine=Engine(settings), run_worker=True)
    async with service.running():
        yield service


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(service, headers=AUTH) as client:
        yield client


async def run(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    created = await client.post("/v1/tasks", json={**TINY_TASK, **fields})
    assert created.status_code == 202, created.text
    return await wait_until(client, created.json()["id"], "succeeded", "failed")


async def test_native_loras_by_name_and_url_run_and_are_echoed(client: httpx.AsyncClient, files: str) -> None:
    named = await run(client, loras=[{"name": "style"}])
    assert named["status"] == "succeeded", named["error"]
    assert named["request"]["loras"] == [{"name": "style", "path": None, "scale": None}]
    by_url = await run(client, loras=[{"path": f"{files}/style.safetensors", "scale": 0.5}])
    assert by_url["status"] == "succeeded", by_url["error"]


async def test_a_pickle_url_fails_the_task_with_lora_unavailable(client: httpx.AsyncClient, files: str) -> None:
    task = await run(client, loras=[{"path": f"{files}/style.bin"}])
    assert task["status"] == "failed" and task["error"]["code"] == "lora_unavailable"
    assert "not a safetensors file" in task["error"]["message"]


@pytest.mark.parametrize(
    ("loras", "code", "param"),
    [
        ([{"name": "other"}], "invalid_parameter", "loras.0.name"),
        ([{"name": "style", "path": "https://example.org/a.safetensors"}], "invalid_request", "loras.0"),
        ([{"path": "ftp://example.org/a.safetensors"}], "invalid_parameter", "loras.0.path"),
        ([{"name": "style", "scale": 5}], "invalid_parameter", "loras.0.scale"),
        ([{"name": f"s{i}"} for i in range(4)], "invalid_parameter", "loras"),
    ],
)
async def test_bad_loras_are_refused_before_queueing(
    client: httpx.AsyncClient, loras: Any, code: str, param: str
) -> None:
    assert_native_error(await client.post("/v1/tasks", json={**TINY_TASK, "loras": loras}), 400, code, param)
    assert (await client.get("/v1/tasks")).json()["data"] == []


async def test_high_runs_lightning_steps_and_says_so(client: httpx.AsyncClient) -> None:
    task = await run(client, acceleration="high", num_inference_steps=20, true_cfg_scale=4.0)
    assert task["status"] == "succeeded", task["error"]
    assert task["progress"]["total"] == 4, "the Lightning steps ran, not the 20 asked"


async def test_kie_loras_in_fals_shape(client: httpx.AsyncClient, files: str) -> None:
    loras = [{"path": "style", "scale": 0.9}, {"path": f"{files}/style.safetensors"}]
    created = await client.post(CREATE, json=tiny_t2i(loras=loras, seed=2))
    data = await poll_until_done(client, assert_envelope(created, 200)["data"]["taskId"])
    assert data["state"] == "success", data["failMsg"]
    assert json.loads(data["param"])["input"]["loras"] == [loras[0], {**loras[1], "scale": 1.0}]


async def test_kie_refuses_an_adapter_it_does_not_offer_in_its_envelope(client: httpx.AsyncClient) -> None:
    body = assert_envelope(await client.post(CREATE, json=tiny_t2i(loras=[{"path": "nope"}])), 422)
    assert "not offered" in body["msg"]


async def test_kie_reports_an_adapter_url_that_fails_the_task_as_the_callers_fault(
    client: httpx.AsyncClient, files: str
) -> None:
    """The worker fails the task with `lora_unavailable`, a caller's error by its class: failCode 422
    (a rule that looked for "invalid" in the code answered 500)."""
    created = await client.post(CREATE, json=tiny_t2i(loras=[{"path": f"{files}/style.bin"}]))
    data = await poll_until_done(client, assert_envelope(created, 200)["data"]["taskId"])
    assert (data["state"], data["failCode"]) == ("fail", "422")
    assert "not a safetensors file" in data["failMsg"]
