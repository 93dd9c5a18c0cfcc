"""The providers' content options through each dialect, on a real service (tiny model, a tiny safety
classifier): DashScope/Pixazo `watermark` and `prompt_extend` (actual_prompt), Novita's NSFW fields,
kie's `enable_safety_checker`, Pixwith's `prompt_optimization`, the native report, and a task whose
every image is withheld."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
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
from tests.conftest import TINY_EVERYWHERE, UNMARKED, LiveServer, asgi_client

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
    for _ in range(6000):  # Pixwith has no steps field: its tasks run all the default steps
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


async def novita_checked_task(client: httpx.AsyncClient) -> dict[str, Any]:
    body = {"prompt": "a fox", "size": "256*256", "extra": {"enable_nsfw_detection": True}}
    task_id = (await client.post("/v3/async/qwen-image-txt2img", json=body)).json()["task_id"]
    return await poll(client, "/v3/async/task-result", lambda b: b["task"]["status"].endswith(("SUCCEED", "FAILED")),
                      task_id=task_id)  # fmt: skip


async def test_novita_reports_each_images_check(open_server: Any) -> None:
    _, client = open_server
    done = await novita_checked_task(client)
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


# -- what each dialect reports (docs/provenance.md, "What each dialect reports") ---------------------

FAL_FAST = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 2, "seed": 7}
REPLICATE = "/v1/models/qwen/qwen-image/predictions"
REPLICATE_FAST = {"num_inference_steps": 2, "aspect_ratio": "1:1", "image_size": "optimize_for_speed", "seed": 7}


@pytest.fixture
async def reporting_server(tmp_path: Path, checker: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A checker that flags everything, and delivers what it flags (`nsfw_action=report`)."""
    settings = {"safety_checker": str(checker), "safety_threshold": 0.0001, "nsfw_action": "report"}
    async for pair in serving(tmp_path, **settings):
        yield pair


@pytest.fixture
async def blurring_server(tmp_path: Path, checker: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = {"safety_checker": str(checker), "safety_threshold": 0.0001, "nsfw_action": "blur"}
    async for pair in serving(tmp_path, **settings):
        yield pair


@pytest.fixture
async def bare_server(tmp_path: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """No safety checker, and prompt extension off on the server."""
    async for pair in serving(tmp_path, prompt_extension=False):
        yield pair


async def fal_run(client: httpx.AsyncClient, **arguments: Any) -> dict[str, Any]:
    answer = await client.post("/run/fal-ai/qwen-image", json={"prompt": "a fox", **FAL_FAST, **arguments})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def replicate_run(client: httpx.AsyncClient, **inputs: Any) -> dict[str, Any]:
    created = await client.post(REPLICATE, json={"input": {"prompt": "a fox", **REPLICATE_FAST, **inputs}})
    assert created.status_code == 201, created.text
    ended = ("succeeded", "failed", "canceled")
    return await poll(client, f"/v1/predictions/{created.json()['id']}", lambda b: b["status"] in ended)


async def test_fal_reports_what_a_flag_everything_checker_flagged(reporting_server: Any) -> None:
    _, client = reporting_server
    out = await fal_run(client, num_images=2)
    assert len(out["images"]) == 2 and out["has_nsfw_concepts"] == [True, True]
    assert "withheld" not in out and "not_applied" not in out


async def test_fal_without_the_safety_checker_checks_nothing(reporting_server: Any) -> None:
    service, client = reporting_server
    out = await fal_run(client, enable_safety_checker=False)
    assert out["has_nsfw_concepts"] == [False] and "not_applied" not in out
    [task] = (await service.store.list_tasks()).tasks
    assert task.report is not None and not task.report.checked


async def test_replicate_reports_flagged_images_in_logs_and_nsfw(reporting_server: Any) -> None:
    _, client = reporting_server
    prediction = await replicate_run(client)
    assert prediction["status"] == "succeeded" and len(prediction["output"]) == 1
    assert prediction["nsfw"] == [True] and prediction["withheld"] is None
    assert "Flagged: image 0 (NSFW score " in prediction["logs"]
    assert "delivered as made" in prediction["logs"]


async def test_replicate_says_a_flagged_image_was_blurred(blurring_server: Any) -> None:
    _, client = blurring_server
    prediction = await replicate_run(client)
    assert prediction["nsfw"] == [True] and "blurred" in prediction["logs"]


async def test_replicate_disable_safety_checker_checks_nothing(reporting_server: Any) -> None:
    _, client = reporting_server
    prediction = await replicate_run(client, disable_safety_checker=True)
    assert prediction["status"] == "succeeded" and prediction["input"]["disable_safety_checker"] is True
    assert prediction["nsfw"] is None and "Flagged" not in prediction["logs"]


async def test_replicate_enhance_prompt_says_the_prompt_used(open_server: Any) -> None:
    _, client = open_server
    prediction = await replicate_run(client, enhance_prompt=True)
    [line] = [line for line in prediction["logs"].splitlines() if line.startswith("Enhanced prompt: ")]
    assert line != "Enhanced prompt: a fox" and prediction["nsfw"] == [False]


async def test_replicate_without_a_checker_says_the_check_was_not_applied(bare_server: Any) -> None:
    _, client = bare_server
    prediction = await replicate_run(client, enhance_prompt=True)
    assert "no safety checker" in prediction["not_applied"]["safety_check"]
    assert "prompt_extend" in prediction["not_applied"] and "Enhanced prompt" not in prediction["logs"]
    assert "Not applied: safety_check: " in prediction["logs"]


async def test_dashscope_says_prompt_extension_was_not_applied(bare_server: Any) -> None:
    _, client = bare_server
    output = await dashscope_task(client)  # prompt_extend: true by default
    assert output["results"][0]["actual_prompt"] == "a red fox"
    assert "prompt_extend" in output["not_applied"] and "nsfw" not in output


async def test_pixazo_says_prompt_extension_was_not_applied(bare_server: Any) -> None:
    _, client = bare_server
    body = {"model": "qwen-image", "input": {"messages": [{"role": "user", "content": [{"text": "a fox"}]}]},
            "parameters": {"size": "256*256", "num_inference_steps": 2}}  # fmt: skip
    answer = await client.post("/qwen-image/v1/generateMultimodeTextToImageRequest", json=body,
                               headers={"Ocp-Apim-Subscription-Key": "k"})  # fmt: skip
    output = answer.json()["output"]
    assert "prompt_extend" in output["not_applied"] and "withheld" not in output and "nsfw" not in output


async def test_pixwith_says_prompt_optimization_was_not_applied(bare_server: Any) -> None:
    _, client = bare_server
    body = {"prompt": "a fox", "model_id": "0-24", "options": {"prompt_optimization": True, "num_outputs": 1}}
    task_id = (await client.post("/api/task/create", json=body, headers={"Api-Key": "k"})).json()["data"]["task_id"]
    done = await poll(client, "/api/task/get", lambda b: b["data"]["status"] in (2, 3), post=True, task_id=task_id)
    assert "prompt_translate" in done["data"]["not_applied"] and len(done["data"]["result_urls"]) == 1


async def test_openai_reports_each_images_verdict(reporting_server: Any) -> None:
    _, client = reporting_server
    body = {"prompt": "a fox", "size": "256x256", "n": 2, "quality": "low"}
    answer = await client.post("/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["nsfw"] == [True, True] and len(answer.json()["data"]) == 2
    assert "not_applied" not in answer.json() and "withheld" not in answer.json()


async def test_openai_streamed_images_carry_the_report(reporting_server: Any) -> None:
    _, client = reporting_server
    body = {"prompt": "a fox", "size": "256x256", "n": 2, "quality": "low", "stream": True}
    answer = await client.post("/v1/images/generations", json=body)
    events = [json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")]
    completed = [event for event in events if event["type"] == "image_generation.completed"]
    assert [event["nsfw"] for event in completed] == [True, True]
    assert all("withheld" not in event and "not_applied" not in event for event in completed)


async def test_novita_verdicts_line_up_with_the_images_it_lists(reporting_server: Any) -> None:
    _, client = reporting_server
    done = await novita_checked_task(client)
    assert done["extra"]["has_nsfw_contents"] == [True] * len(done["images"])
    assert all(image["nsfw_detection_result"]["valid"] is False for image in done["images"])


def partly_withheld() -> Any:
    """A task of two images: the first delivered (not flagged), the second flagged and withheld."""
    from dataclasses import replace

    from qwen_image_server.report import ImageNote, TaskReport
    from qwen_image_server.tasks.model import TaskStatus
    from tests.dialects.test_novita import RESULT_IMAGE, made_task

    images = (ImageNote(0, 5, nsfw=False, nsfw_score=0.1),
              ImageNote(1, 6, nsfw=True, withheld="flagged by the safety checker", nsfw_score=0.9))  # fmt: skip
    report = TaskReport(None, ("invisible_watermark",), {"partial_images": "previews are not checked"}, images)
    return replace(made_task(TaskStatus.SUCCEEDED, results=(RESULT_IMAGE,)), report=report)


WITHHELD = [{"index": 1, "reason": "flagged by the safety checker"}]
NOT_APPLIED = {"partial_images": "previews are not checked"}


def test_fal_kie_and_novita_report_a_withheld_image_and_verdicts_per_image_listed() -> None:
    from qwen_image_server.api.fal.translate import output_of
    from qwen_image_server.api.kie.translate import result_json
    from qwen_image_server.api.novita.translate import task_result
    from tests.dialects.test_novita import link

    task = partly_withheld()
    fal = output_of(task, lambda image: link(image, task)[0]).model_dump(exclude_none=True)
    assert fal["has_nsfw_concepts"] == [False] and len(fal["images"]) == 1
    assert fal["withheld"] == WITHHELD and fal["not_applied"] == NOT_APPLIED
    kie = json.loads(result_json(task, link) or "{}")
    assert kie["has_nsfw_concepts"] == [False] and len(kie["resultUrls"]) == 1
    assert kie["withheld"] == WITHHELD and kie["not_applied"] == NOT_APPLIED
    novita = task_result(task, link).model_dump()
    assert novita["extra"]["has_nsfw_contents"] == [False] and len(novita["images"]) == 1
    assert novita["extra"]["withheld"] == WITHHELD and novita["extra"]["not_applied"] == NOT_APPLIED


def test_replicate_pixwith_and_openai_report_a_withheld_image() -> None:
    from qwen_image_server.api.outcome import additions
    from qwen_image_server.api.pixwith.translate import task_data
    from qwen_image_server.api.replicate.translate import to_prediction
    from tests.dialects.test_novita import link

    task = partly_withheld()
    prediction = to_prediction(task, link, None).model_dump()
    assert len(prediction["output"]) == 1 and prediction["nsfw"] == [False]
    assert prediction["withheld"] == WITHHELD and prediction["not_applied"] == NOT_APPLIED
    assert "Withheld: image 1 (NSFW score 0.900): flagged by the safety checker" in prediction["logs"]
    assert "Not applied: partial_images: previews are not checked" in prediction["logs"]
    assert "Flagged" not in prediction["logs"], "the flagged image was not delivered"
    pixwith = task_data(task, link).model_dump()
    assert len(pixwith["result_urls"]) == 1 and pixwith["nsfw"] == [False]
    assert pixwith["withheld"] == WITHHELD and pixwith["not_applied"] == NOT_APPLIED
    openai = additions(task)  # the OpenAI answer's additions
    assert openai["nsfw"] == [False] and [item.model_dump() for item in openai["withheld"]] == WITHHELD


def test_dashscope_reports_a_withheld_image_in_both_answers() -> None:
    from qwen_image_server.api.dashscope.translate import to_multimodal_response, to_task_response
    from tests.dialects.test_novita import link

    task = partly_withheld()
    sync = to_multimodal_response(task, link, "r").output.model_dump()
    assert len(sync["choices"][0]["message"]["content"]) == 1 and sync["nsfw"] == [False]
    assert sync["withheld"] == WITHHELD and sync["not_applied"] == NOT_APPLIED
    output = to_task_response(task, link, "r").output
    assert [result.code for result in output.results or []] == [None, "DataInspectionFailed"]
    assert output.nsfw == [False, True] and output.not_applied == NOT_APPLIED


# -- the providers' own SDKs take the additions in stride (a live server: no checker, no extension) --


@pytest.fixture(scope="module")
def bare_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("bare-live") / "data"
    chosen = Settings(**(TINY_EVERYWHERE | FAST_SERVICE | {"data_dir": data_dir, "prompt_extension": False}))
    with LiveServer(chosen, Engine(chosen)) as server:
        yield server


def test_openais_sdk_reads_an_answer_that_says_what_was_not_applied(bare_live: LiveServer) -> None:
    import openai

    with openai.OpenAI(base_url=f"{bare_live.url}/v1", api_key="sk-any", max_retries=0, timeout=120) as client:
        answer = client.images.generate(prompt="a fox", size="256x256", quality="low")  # type: ignore[arg-type]
    assert answer.data is not None and len(answer.data) == 1 and answer.data[0].url
    extra = answer.model_extra or {}
    assert "no safety checker" in extra["not_applied"]["safety_check"], "OpenAI moderates every image"


def test_dashscopes_sdk_reads_answers_that_say_what_was_not_applied(bare_live: LiveServer) -> None:
    dashscope = pytest.importorskip("dashscope")
    fast = {"size": "256*256", "num_inference_steps": 2}
    messages = [{"role": "user", "content": [{"text": "a fox"}]}]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dashscope, "base_http_api_url", f"{bare_live.url}/api/v1")
        answer = dashscope.MultiModalConversation.call(model="qwen-image", messages=messages, api_key="k", **fast)
        assert answer.status_code == 200, answer
        assert len(answer.output.choices[0].message.content) == 1 and "prompt_extend" in answer.output.not_applied
        created = dashscope.ImageSynthesis.async_call(model="qwen-image", prompt="a fox", api_key="k", **fast)
        done = dashscope.ImageSynthesis.wait(created, api_key="k")
    assert done.output.task_status == "SUCCEEDED" and done.output.results[0].url
    assert "prompt_extend" in done.output.not_applied


def test_novitas_sdk_reads_an_answer_that_says_what_was_not_applied(bare_live: LiveServer) -> None:
    novita_client = pytest.importorskip("novita_client")
    client = novita_client.NovitaClient("test-key", base_url=bare_live.url)
    body = {"prompt": "a fox", "size": "256*256", "extra": {"enable_nsfw_detection": True}}
    submitted = client._post("/v3/async/qwen-image-txt2img", body)
    result = client.wait_for_task_v3(submitted["task_id"], wait_for=600)
    assert result.task.status == novita_client.V3TaskResponseStatus.TASK_STATUS_SUCCEED and len(result.images) == 1
    raw = httpx.get(f"{bare_live.url}/v3/async/task-result", params={"task_id": submitted["task_id"]}).json()
    assert (
        "no safety checker" in raw["extra"]["not_applied"]["safety_check"] and raw["extra"]["has_nsfw_contents"] == []
    )
