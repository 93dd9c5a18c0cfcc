"""The providers' content options through each dialect, on a real service (tiny model, a tiny safety
classifier): DashScope/Pixazo `watermark` and `prompt_extend` (actual_prompt), Novita's NSFW fields,
kie's `enable_safety_checker`, Pixwith's `prompt_optimization`, the native report, and a task whose
every image is withheld."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from qwen_image_server.engine import Engine
from qwen_image_server.engine.tiny_safety import save_tiny_safety_checker
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK, wait_until
from tests.conftest import UNMARKED, asgi_client

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer test-key"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checker")
    save_tiny_safety_checker(folder)
    return folder


async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    chosen = Settings(**(UNMARKED | FAST_SERVICE | {"data_dir": tmp_path / "data", "c2pa": False} | settings))
    service = Service.build(chosen, engine=Engine(chosen), run_worker=True)
    async with service.running(), asgi_client(service, headers=AUTH) as client:
        yield service, client


@pytest.fixture
async def open_server(tmp_path: Path, checker: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A checker that flags nothing (its scores are all below a threshold of 0.999)."""
    async for pair in serving(tmp_path, safety_checker=str(checker), safety_threshold=0.999):
        yield pair


@pytest.fixture
async def strict_server(tmp_path: Path, checker: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A checker that flags everything (a threshold below every score), withholding by default, and
    checks every image (`safety_check_force`)."""
    settings = {"safety_checker": str(checker), "safety_threshold": 0.0001, "safety_check_force": True}
    async for pair in serving(tmp_path, **settings):
        yield pair


async def poll(client: httpx.AsyncClient, url: str, done: Any, post: bool = False, **params: Any) -> dict[str, Any]:
    for _ in range(1200):
        answer = await (client.post(url, json=params) if post else client.get(url, params=params))
        body: dict[str, Any] = answer.json()
        if done(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"not done: {body}")


async def dashscope_task(client: httpx.AsyncClient, **parameters: Any) -> dict[str, Any]:
    body = {"model": "qwen-image", "input": {"prompt": "a red fox"},
            "parameters": {"size": "256*256", "num_inference_steps": 2, "seed": 7, **parameters}}  # fmt: skip
    created = await client.post("/api/v1/services/aigc/text2image/image-synthesis", json=body, headers=ASYNC)
    task_id = created.json()["output"]["task_id"]
    ended = ("SUCCEEDED", "FAILED")
    return (await poll(client, f"/api/v1/tasks/{task_id}", lambda b: b["output"]["task_status"] in ended))["output"]


async def picture(client: httpx.AsyncClient, url: str) -> np.ndarray:
    path = url.split("://", 1)[1].split("/", 1)[1]
    data = (await client.get("/" + path)).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


async def test_dashscope_extends_the_prompt_by_default_and_reports_it(open_server: Any) -> None:
    _, client = open_server
    [extended] = (await dashscope_task(client))["results"]
    assert extended["orig_prompt"] == "a red fox" and extended["actual_prompt"] != "a red fox"
    [as_given] = (await dashscope_task(client, prompt_extend=False))["results"]
    assert as_given["actual_prompt"] == "a red fox"


async def test_dashscope_watermark_on_request_only(open_server: Any) -> None:
    _, client = open_server
    [plain] = (await dashscope_task(client, prompt_extend=False))["results"]
    [marked] = (await dashscope_task(client, prompt_extend=False, watermark=True))["results"]
    changed = np.abs(await picture(client, marked["url"]) - await picture(client, plain["url"])).max(axis=2) > 0
    assert 0 < changed.mean() <= 0.03 and np.nonzero(changed)[0].min() > 200, "a small mark at the bottom"


async def test_pixazo_marks_by_default(open_server: Any) -> None:
    service, client = open_server
    body = {"model": "qwen-image", "input": {"messages": [{"role": "user", "content": [{"text": "a fox"}]}]},
            "parameters": {"size": "256*256", "num_inference_steps": 2, "prompt_extend": False}}  # fmt: skip
    answer = await client.post("/qwen-image/v1/generateMultimodeTextToImageRequest", json=body,
                               headers={"Ocp-Apim-Subscription-Key": "k"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    [task] = (await service.store.list_tasks()).tasks
    assert task.request.watermark and task.report is not None and "watermark" in task.report.applied


async def test_novita_reports_each_images_check(open_server: Any) -> None:
    _, client = open_server
    body = {"prompt": "a fox", "size": "256*256", "extra": {"enable_nsfw_detection": True}}
    task_id = (await client.post("/v3/async/qwen-image-txt2img", json=body)).json()["task_id"]
    done = await poll(client, "/v3/async/task-result", lambda b: b["task"]["status"].endswith(("SUCCEED", "FAILED")),
                      task_id=task_id)  # fmt: skip
    assert done["extra"]["enable_nsfw_detection"] is True and done["extra"]["has_nsfw_contents"] == [False]
    [image] = done["images"]
    result = image["nsfw_detection_result"]
    assert result["valid"] is True and 0 <= result["confidence"] < 0.999


async def test_kie_checks_by_default_and_says_which_were_flagged(open_server: Any) -> None:
    _, client = open_server
    body = {"model": "qwen/text-to-image", "input": {"prompt": "fox", "image_size": "square", "num_inference_steps": 2}}
    task_id = (await client.post("/api/v1/jobs/createTask", json=body)).json()["data"]["taskId"]
    done = await poll(client, "/api/v1/jobs/recordInfo", lambda b: b["data"]["state"] in ("success", "fail"),
                      taskId=task_id)  # fmt: skip
    assert json.loads(done["data"]["resultJson"])["has_nsfw_concepts"] == [False]
    assert json.loads(done["data"]["param"])["input"]["enable_safety_checker"] is True


async def test_a_server_without_a_checker_says_so(tmp_path: Path) -> None:
    async for _, client in serving(tmp_path):
        body = {"model": "qwen/text-to-image", "input": {"prompt": "fox", "image_size": "square",
                                                         "num_inference_steps": 2}}  # fmt: skip
        task_id = (await client.post("/api/v1/jobs/createTask", json=body)).json()["data"]["taskId"]
        done = await poll(client, "/api/v1/jobs/recordInfo", lambda b: b["data"]["state"] in ("success", "fail"),
                          taskId=task_id)  # fmt: skip
        result = json.loads(done["data"]["resultJson"])
        assert "has_nsfw_concepts" not in result and "no safety checker" in result["not_applied"]["safety_check"]


async def test_the_native_report_and_withheld_images(strict_server: Any) -> None:
    _, client = strict_server
    created = await client.post("/v1/tasks", json={**TINY_TASK, "n": 2, "safety_check": True})
    task = await wait_until(client, created.json()["id"], "succeeded", "failed")
    assert task["status"] == "failed" and task["error"]["code"] == "content_withheld"
    assert "flagged by the safety checker" in task["error"]["message"]


async def test_the_native_report(open_server: Any) -> None:
    _, client = open_server
    checked = await client.post("/v1/tasks", json={**TINY_TASK, "prompt_extend": True, "safety_check": True})
    task = await wait_until(client, checked.json()["id"], "succeeded", "failed")
    report = task["report"]
    assert report["actual_prompt"] and report["actual_prompt"] != TINY_TASK["prompt"]
    assert report["applied"] == ["prompt_extend"] and report["not_applied"] == {}
    [image] = report["images"]
    assert image["nsfw"] is False and 0 <= image["nsfw_score"] < 0.999 and image["withheld"] is None


async def test_dashscope_says_data_inspection_failed_for_withheld_images(strict_server: Any) -> None:
    _, client = strict_server
    body = {"model": "qwen-image", "input": {"prompt": "a red fox"},
            "parameters": {"size": "256*256", "num_inference_steps": 2, "prompt_extend": False}}  # fmt: skip
    created = await client.post("/api/v1/services/aigc/text2image/image-synthesis", json=body, headers=ASYNC)
    task_id = created.json()["output"]["task_id"]
    ended = ("SUCCEEDED", "FAILED")
    output = (await poll(client, f"/api/v1/tasks/{task_id}", lambda b: b["output"]["task_status"] in ended))["output"]
    assert output["task_status"] == "FAILED" and output["code"] == "DataInspectionFailed"


async def test_pixwith_translates_the_prompt(open_server: Any) -> None:
    service, client = open_server
    body = {"prompt": "一只狐狸", "model_id": "0-24", "options": {"prompt_optimization": True, "num_outputs": 1}}
    answer = await client.post("/api/task/create", json=body, headers={"Api-Key": "k"})
    task_id = answer.json()["data"]["task_id"]
    await poll(client, "/api/task/get", lambda b: b["data"]["status"] in (2, 3), post=True, task_id=task_id)
    task = await service.store.get(task_id)
    assert task.report is not None and "prompt_translate" in task.report.applied
    assert task.report.actual_prompt and task.report.actual_prompt != "一只狐狸"


async def test_openai_answers_moderation_blocked(strict_server: Any) -> None:
    _, client = strict_server
    body = {"prompt": "a fox", "size": "256x256", "moderation": "low", "quality": "low"}
    answer = await client.post("/v1/images/generations", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "moderation_blocked"


def test_dashscope_lists_a_withheld_image_as_data_inspection_failed() -> None:
    from dataclasses import replace

    from qwen_image_server.api.dashscope.translate import to_task_response
    from qwen_image_server.report import ImageNote, TaskReport
    from qwen_image_server.tasks.model import StoredImage, TaskStatus
    from tests.dialects.test_novita import RESULT_IMAGE, link, made_task

    report = TaskReport("a fox at dawn", ("prompt_extend",), {}, (
        ImageNote(0, 5, nsfw=False), ImageNote(1, 6, nsfw=True, withheld="flagged by the safety checker")))  # fmt: skip
    task = replace(made_task(TaskStatus.SUCCEEDED, results=(RESULT_IMAGE,)), report=report)
    assert isinstance(task.results[0], StoredImage)
    first, second = to_task_response(task, link, "r").output.results or []
    assert first.url == "https://img.example/task_1/0.jpg" and first.actual_prompt == "a fox at dawn"
    assert second.url is None and second.code == "DataInspectionFailed"
    assert second.message == "flagged by the safety checker"
