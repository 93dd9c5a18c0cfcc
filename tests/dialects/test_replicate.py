"""Replicate's predictions API through the official `replicate` client (replicate-python), unchanged but
for its base URL, against a live server with a key and the tiny model: run, create and wait, the
models endpoint, edits, cancel, `Prefer: wait`, errors, signed webhooks and the paginated list."""

from __future__ import annotations

import base64
import json
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError
from typer.testing import CliRunner

from qwen_image_server.api.replicate.translate import callback_payload, to_prediction, version_id
from qwen_image_server.cli import app
from qwen_image_server.engine import Engine
from qwen_image_server.report import TaskReport
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, TaskStatus
from tests.client.conftest import serving
from tests.conftest import TINY_EVERYWHERE, LiveServer, asgi_client, picture_bytes
from tests.dialects.test_kie import link, make_task
from tests.unit.local_http import read_body, send_body
from tests.unit.local_http import serving as receiving

pytestmark = pytest.mark.anyio

# The tiny model at its smallest size and two steps (`custom` is our extension for width and height).
FAST: dict[str, Any] = {"aspect_ratio": "custom", "width": 256, "height": 256, "num_inference_steps": 2}
MODEL_PATH = "/v1/models/qwen/qwen-image/predictions"


@pytest.fixture(scope="module")
def keyed(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """A server with one API key; input images and webhooks may use loopback."""
    data_dir = tmp_path_factory.mktemp("replicate") / "data"
    created = CliRunner().invoke(app, ["keys", "create", "--name", "replicate", "--data-dir", str(data_dir)])
    assert created.exit_code == 0, created.stderr
    with serving(engine, data_dir, allowed_fetch_networks="127.0.0.0/8") as server:
        yield server, created.stdout.strip()


@contextmanager
def official_client(server: LiveServer, key: str) -> Iterator[replicate.Client]:
    """replicate-python pointed at `server`; its connections are closed after (it has no close of its own)."""
    transport = httpx.HTTPTransport()
    try:
        yield replicate.Client(api_token=key, base_url=server.url, transport=transport)
    finally:
        transport.close()


@pytest.fixture
def client(keyed: tuple[LiveServer, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[replicate.Client]:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    with official_client(*keyed) as polling_fast:
        yield polling_fast


def test_run_returns_the_image_urls(client: replicate.Client, keyed: tuple[LiveServer, str]) -> None:
    output = client.run("qwen/qwen-image", input={"prompt": "a fox", "output_format": "png", **FAST})
    assert isinstance(output, list) and len(output) == 1
    url = output[0]
    assert isinstance(url, str) and url.startswith(keyed[0].url)  # http:// is not wrapped as a FileOutput
    assert httpx.get(url, timeout=10).content.startswith(b"\x89PNG")


def test_run_with_a_version_reads_the_version(client: replicate.Client) -> None:
    output = client.run(f"qwen/qwen-image:{version_id('qwen/qwen-image')}", input={"prompt": "a fox", **FAST})
    assert isinstance(output, list) and len(output) == 1


def test_create_then_wait(client: replicate.Client) -> None:
    prediction = client.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox", "seed": 7, **FAST})
    assert prediction.status == "starting" and prediction.model == "qwen/qwen-image"
    assert prediction.urls is not None and prediction.urls["get"].endswith(f"/v1/predictions/{prediction.id}")
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.error is None
    assert prediction.output is not None and len(prediction.output) == 1
    assert prediction.input is not None and prediction.input["seed"] == 7
    assert prediction.output[0].rsplit("?")[0].endswith(".webp")  # Replicate's default format
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0
    assert prediction.logs is not None and "Using seed: 7" in prediction.logs
    assert prediction.progress is not None and prediction.progress.percentage == 1.0
    assert prediction.version == version_id("qwen/qwen-image")


def test_the_models_endpoint_and_the_version_field_create_alike(client: replicate.Client) -> None:
    by_model = client.models.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox", **FAST})
    by_version = client.predictions.create(version="qwen/qwen-image:anything", input={"prompt": "a fox", **FAST})
    by_id = client.predictions.create(version=version_id("qwen/qwen-image"), input={"prompt": "a fox", **FAST})
    for prediction in (by_model, by_version, by_id):
        prediction.wait()
        assert prediction.status == "succeeded" and prediction.model == "qwen/qwen-image"
    model = client.models.get("qwen/qwen-image-edit")
    assert model.latest_version is not None and model.latest_version.id == version_id("qwen/qwen-image-edit")


def test_an_edit_of_a_data_uri(client: replicate.Client) -> None:
    image = "data:image/png;base64," + base64.b64encode(picture_bytes((256, 256))).decode()
    output = client.run(
        "qwen/qwen-image-edit",
        input={"prompt": "make it blue", "image": image, "output_format": "jpg", **FAST},
    )
    assert isinstance(output, list) and output[0].rsplit("?")[0].endswith(".jpg")


def test_prefer_wait_answers_the_finished_prediction(client: replicate.Client, keyed: tuple[LiveServer, str]) -> None:
    # (replicate-python 1.0.7's `predictions.create(model=...)` drops `wait`; the models namespace keeps it)
    prediction = client.models.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox", **FAST}, wait=30)
    assert prediction.status == "succeeded" and prediction.output
    server, key = keyed
    answer = httpx.post(
        f"{server.url}/v1/models/qwen/qwen-image/predictions",
        json={"input": {"prompt": "a fox", **FAST}},
        headers={"Authorization": f"Bearer {key}", "Prefer": "wait=30"},
        timeout=40,
    )
    assert answer.status_code == 201 and answer.json()["status"] == "succeeded"
    assert answer.headers["Location"] == f"{server.url}/v1/predictions/{answer.json()['id']}"


def test_cancel_a_long_prediction(client: replicate.Client) -> None:
    long = {**FAST, "num_inference_steps": 250, "go_fast": False}
    prediction = client.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox", **long})
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled" and prediction.output is None
    again = client.predictions.cancel(prediction.id)  # a finished prediction is answered as it is
    assert again.status == "canceled"


@pytest.mark.parametrize(
    ("input", "field"),
    [
        ({"prompt": "a fox", "colour": "red"}, "input.colour"),
        ({"prompt": "a fox", "num_inference_steps": 1}, "input.num_inference_steps"),
        ({"prompt": "a fox", "strength": 0.5}, "input.strength"),
        ({"prompt": "a fox", "aspect_ratio": "match_input_image"}, "input.aspect_ratio"),
        ({"prompt": "a fox", "image": "ftp://example.com/a.png"}, "image"),
    ],
)
def test_bad_input_is_a_replicate_error_naming_the_field(
    client: replicate.Client, input: dict[str, Any], field: str
) -> None:
    with pytest.raises(ReplicateError) as refused:
        client.predictions.create(model="qwen/qwen-image", input=input)
    error = refused.value
    assert error.status == 422 and error.title == "Input validation failed"
    assert error.detail is not None and field.removeprefix("input.") in error.detail


def test_unknown_models_predictions_and_versions(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as unknown_model:
        client.models.predictions.create(model="qwen/qwen-video", input={"prompt": "a fox"})
    assert unknown_model.value.status == 404 and "qwen/qwen-image" in str(unknown_model.value.detail)
    with pytest.raises(ReplicateError) as unknown_prediction:
        client.predictions.get("task_nothere")
    assert unknown_prediction.value.status == 404 and "task_nothere" in str(unknown_prediction.value.detail)
    with pytest.raises(ReplicateError) as unknown_version:
        client.predictions.create(version="0" * 64, input={"prompt": "a fox"})
    assert unknown_version.value.status == 422 and "version" in str(unknown_version.value.detail)


def test_a_wrong_key_is_401(keyed: tuple[LiveServer, str]) -> None:
    server, key = keyed
    with official_client(server, key[:-2] + "xx") as wrong:
        for call in (
            lambda: wrong.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox"}),
            lambda: wrong.predictions.list(),
        ):
            with pytest.raises(ReplicateError) as refused:
                call()
            assert refused.value.status == 401 and refused.value.title == "Unauthenticated"


def test_only_the_completed_webhook_is_offered(client: replicate.Client) -> None:
    hook = "http://127.0.0.1:9/hook"
    for events in (["start", "completed"], ["logs"]):
        with pytest.raises(ReplicateError) as refused:
            client.predictions.create(
                model="qwen/qwen-image", input={"prompt": "a fox"}, webhook=hook, webhook_events_filter=events
            )
        assert refused.value.status == 422 and "completed" in str(refused.value.detail)


def test_the_completed_webhook_is_signed_for_the_keys_secret(client: replicate.Client) -> None:
    received: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()

    def hook(handler: BaseHTTPRequestHandler) -> None:
        received.put((dict(handler.headers.items()), read_body(handler)))
        send_body(handler, b"ok")

    with receiving({"/hook": hook}) as url:
        prediction = client.predictions.create(
            model="qwen/qwen-image",
            input={"prompt": "a fox", **FAST},
            webhook=f"{url}/hook",
            webhook_events_filter=["completed"],
        )
        headers, body = received.get(timeout=60)
    payload = json.loads(body)
    assert payload["id"] == prediction.id and payload["status"] == "succeeded" and len(payload["output"]) == 1
    assert payload["webhook_events_filter"] == ["completed"]
    secret = client.webhooks.default.secret()
    assert secret.key.startswith("whsec_")
    client.webhooks.validate(headers=headers, body=body.decode(), secret=secret, tolerance=300)  # raises if not
    tampered = body.replace(b"succeeded", b"failed")
    with pytest.raises(replicate.webhook.InvalidSignatureError):
        client.webhooks.validate(headers=headers, body=tampered.decode(), secret=secret)


def test_the_list_pages_with_full_next_urls(client: replicate.Client, keyed: tuple[LiveServer, str]) -> None:
    made = [client.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox", **FAST}) for _ in range(3)]
    first = client.predictions.list(cursor=f"{keyed[0].url}/v1/predictions?limit=2")
    assert [p.id for p in first.results] == [made[2].id, made[1].id]
    assert first.next is not None and first.next.startswith(keyed[0].url) and "limit=2" in first.next
    second = client.predictions.list(cursor=first.next)
    assert second.results[0].id == made[0].id
    assert len(client.predictions.list().results) >= 3
    for prediction in made:
        prediction.wait()


def test_edit_plus_takes_a_list_of_loopback_urls_and_data_uris(client: replicate.Client) -> None:
    png = picture_bytes((256, 256), color=(20, 200, 40))

    def image(handler: BaseHTTPRequestHandler) -> None:
        send_body(handler, png, content_type="image/png")

    with receiving({"/a.png": image}) as url:
        data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
        prediction = client.models.predictions.create(
            model="qwen/qwen-image-edit-plus",
            input={"prompt": "put them together", "image": [f"{url}/a.png", data_uri], **FAST},
            wait=30,
        )
    assert prediction.status == "succeeded" and prediction.output and len(prediction.output) == 1
    assert "image" not in (prediction.input or {})  # the images are kept, not their URLs


# -- in-process, without the official client -------------------------------------------------------


async def test_go_fast_on_a_server_that_cannot_skip_steps(tmp_path: Path, engine: Engine) -> None:
    """A server with compiled blocks cannot run go_fast: asked for, it is refused; unset, it is off."""
    settings = Settings(**TINY_EVERYWHERE, data_dir=tmp_path / "data", compile=True, max_wait_seconds=0)
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service) as http:
        refused = await http.post(MODEL_PATH, json={"input": {"prompt": "a fox", "go_fast": True}})
        assert refused.status_code == 422 and refused.json()["invalid_fields"][0]["field"] == "input.go_fast"
        created = await http.post(MODEL_PATH, json={"input": {"prompt": "a fox"}})
        assert created.status_code == 201 and created.json()["input"]["go_fast"] is False
        assert (await service.store.get(created.json()["id"])).request.acceleration == "none"


def test_logs_report_options_not_applied_and_progress() -> None:
    task = replace(
        make_task(TaskStatus.RUNNING),
        progress=Progress(1, 2),
        report=TaskReport(actual_prompt="a red fox in snow", not_applied={"safety_check": "no checker here"}),
    )
    prediction = to_prediction(task, link, "http://server/", just_created=True)
    assert prediction.status == "starting"  # a create's answer before the end, as Replicate's
    assert to_prediction(task, link, "http://server/").status == "processing"
    assert prediction.logs.splitlines() == [
        "Using seed: 5",
        "Enhanced prompt: a red fox in snow",
        "Not applied: safety_check: no checker here",
        "50%|█████     | 1/2",
    ]
    assert prediction.not_applied == {"safety_check": "no checker here"}
    assert prediction.urls == {
        "get": "http://server/v1/predictions/task_x",
        "cancel": "http://server/v1/predictions/task_x/cancel",
    }


def test_the_webhook_body_is_the_finished_prediction() -> None:
    body = callback_payload(make_task(TaskStatus.SUCCEEDED), link)
    assert body["status"] == "succeeded" and body["output"] == ["https://cdn/task_x/0.png"]
    assert body["metrics"] == {"predict_time": 7.5, "total_time": 9.5} and body["urls"] is None
    assert body["completed_at"] == "2026-01-02T03:04:14.500000Z"


def test_image_to_image_with_a_strength(client: replicate.Client, keyed: tuple[LiveServer, str]) -> None:
    image = "data:image/png;base64," + base64.b64encode(picture_bytes((128, 96))).decode()
    inputs = {"prompt": "a fox", "image": image, "strength": 0.5, "num_inference_steps": 4, "go_fast": False}
    prediction = client.models.predictions.create(model="qwen/qwen-image", input=inputs, wait=60)
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.output, prediction.error
    assert prediction.input is not None and prediction.input["strength"] == 0.5
    server, key = keyed
    native = httpx.get(f"{server.url}/v1/tasks/{prediction.id}", headers={"Authorization": f"Bearer {key}"}).json()
    assert native["request"]["strength"] == 0.5 and native["progress"]["total"] == 2, "0.5 of 4 steps ran"
