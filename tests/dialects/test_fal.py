"""fal's own `fal-client`, unchanged but for its two host URLs, against a live server with the tiny
model: subscribe (submit, status, result) for text-to-image and edits, logs while running, cancel,
input errors, keys, the webhook, `sync_mode` data URIs and the synchronous `run`. Also the pure
renderings of a failed request (its status, result error and webhook)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from qwen_image_server.api.fal.translate import RequestUrls, callback_payload, error_body, failure_of, status_out
from qwen_image_server.cli import app as cli
from qwen_image_server.engine import Engine
from qwen_image_server.tasks.model import StoredImage, Task, TaskError, TaskStatus
from tests.api.test_callbacks import receiving
from tests.client.conftest import serving
from tests.conftest import LiveServer, picture_bytes
from tests.dialects.test_kie import make_task
from tests.unit.local_http import send_body
from tests.unit.local_http import serving as serving_files

fal_client = pytest.importorskip("fal_client")
from fal_client.client import Completed, FalClientHTTPError, InProgress, Queued  # noqa: E402

KEY = "fal-test-key"  # an open server takes any key
FAST: dict[str, Any] = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 2}
SLOW: dict[str, Any] = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 250}


def point_at(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue host is the server's root, the run host its /run path (docs/fal.md)."""
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{server.url}/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{server.url}/run/")


@pytest.fixture
def fal(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    point_at(live_server, monkeypatch)
    with closing(fal_client.SyncClient(key=KEY)) as client:
        yield client


@contextmanager
def closing(client: Any) -> Iterator[Any]:
    """fal-client's SyncClient has no close(); its httpx client is made on first use."""
    try:
        yield client
    finally:
        if "_client" in vars(client):
            client._client.close()


def png_of(url: str) -> Image.Image:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        assert header == "data:image/png;base64"
        return Image.open(io.BytesIO(base64.b64decode(data)))
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def data_uri(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode()


def test_subscribe_text_to_image_with_a_seed_and_two_images(fal: Any, live_server: LiveServer) -> None:
    updates: list[Any] = []
    arguments = {"prompt": "a red fox in snow", "seed": 7, "num_images": 2, **FAST}
    out = fal.subscribe("fal-ai/qwen-image", arguments, with_logs=True, on_queue_update=updates.append)
    assert out["seed"] == 7 and out["prompt"] == "a red fox in snow"
    assert len(out["images"]) == 2 and out["has_nsfw_concepts"] == [False, False]
    assert out["timings"]["inference"] > 0
    for image in out["images"]:
        assert image["url"].startswith(live_server.url)
        assert (image["content_type"], image["width"], image["height"]) == ("image/png", 256, 256)
        assert image["file_name"].endswith(".png") and image["file_size"] > 0
        assert png_of(image["url"]).size == (256, 256)
    completed = updates[-1]
    assert isinstance(completed, Completed) and completed.error is None
    assert completed.metrics["inference_time"] > 0
    assert [line["message"] for line in completed.logs][-1] == "done: 2 images"
    # The server has no safety checker configured: fal's default `enable_safety_checker` is reported.
    assert "safety_check" in out["not_applied"]


def test_edit_an_image_given_as_a_data_uri(fal: Any) -> None:
    arguments = {"prompt": "make it blue", "image_url": data_uri(picture_bytes((96, 64))), "output_format": "jpeg"}
    out = fal.subscribe("fal-ai/qwen-image-edit", {**arguments, **FAST, "seed": 3})
    [image] = out["images"]
    assert image["content_type"] == "image/jpeg" and image["file_name"].endswith(".jpg")
    assert out["seed"] == 3


def test_edit_plus_fetches_its_images_from_urls(fal: Any) -> None:
    red, blue = picture_bytes((64, 64)), picture_bytes((64, 64), color=(20, 20, 220))
    routes = {
        "/red.png": lambda handler: send_body(handler, red, content_type="image/png"),
        "/blue.png": lambda handler: send_body(handler, blue, content_type="image/png"),
    }
    with serving_files(routes) as base:
        arguments = {"prompt": "combine them", "image_urls": [f"{base}/red.png", f"{base}/blue.png"], **FAST}
        out = fal.subscribe("fal-ai/qwen-image-edit-plus", arguments)
    assert png_of(out["images"][0]["url"]).size == (256, 256)


def test_the_status_stream_ends_with_completed(fal: Any, live_server: LiveServer) -> None:
    handle = fal.submit("fal-ai/qwen-image", {"prompt": "a streamed fox", **FAST})
    statuses = []
    with httpx.stream("GET", f"{handle.status_url}/stream", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                statuses.append(json.loads(line.removeprefix("data:")))
    assert statuses[-1]["status"] == "COMPLETED" and statuses[-1]["metrics"]["inference_time"] > 0
    assert {status["request_id"] for status in statuses} == {handle.request_id}


def test_status_logs_while_running_and_cancel(fal: Any) -> None:
    slow = fal.submit("fal-ai/qwen-image", {"prompt": "a slow fox", **SLOW})
    queued = fal.submit("fal-ai/qwen-image", {"prompt": "a queued fox", **FAST})
    assert queued.status_url.endswith(f"/fal-ai/qwen-image/requests/{queued.request_id}/status")
    try:
        running = wait_for(lambda: slow.status(with_logs=True), lambda status: _steps_logged(status))
        assert any(line["message"].startswith("started") for line in running.logs)
        assert isinstance(slow.status(), InProgress) and slow.status().logs is None, "logs only when asked"
        assert isinstance(queued.status(), Queued)

        queued.cancel()
        done = queued.status(with_logs=True)
        assert isinstance(done, Completed) and done.error_type == "client_cancelled"
        with pytest.raises(FalClientHTTPError) as canceled:
            queued.get()
        assert canceled.value.status_code == 499 and canceled.value.error_type == "client_cancelled"
        with pytest.raises(FalClientHTTPError) as again:
            queued.cancel()
        assert again.value.status_code == 400 and "ALREADY_COMPLETED" in str(again.value)
    finally:
        slow.cancel()
    ended = wait_for(slow.status, lambda status: isinstance(status, Completed))
    assert ended.error_type == "client_cancelled"
    with pytest.raises(FalClientHTTPError) as unknown:
        fal.cancel("fal-ai/qwen-image", "task_nosuchtask")
    assert unknown.value.status_code == 404


def _steps_logged(status: Any) -> bool:
    return isinstance(status, InProgress) and any(line["message"].startswith("step") for line in status.logs or ())


def wait_for(read: Any, done: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if done(found):
            return found
        assert time.monotonic() < deadline, f"still {found}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("arguments", "loc", "says"),
    [
        ({"prompt": "fox", "num_images": 9}, ["body", "num_images"], "less than or equal to 4"),
        ({"prompt": "fox", "strength": 0.5}, ["body", "strength"], "not a known parameter"),
        ({"prompt": "fox", "image_size": {"width": 4096, "height": 256}}, ["body", "image_size", "width"], "2048"),
        ({"prompt": "fox", "image_size": "huge"}, ["body", "image_size"], "square_hd"),
        ({"prompt": "fox", "use_turbo": True, "acceleration": "regular"}, ["body", "use_turbo"], "high"),
    ],
)
def test_bad_input_is_a_422_with_fals_detail_list(
    fal: Any, arguments: dict[str, Any], loc: list[str], says: str
) -> None:
    with pytest.raises(FalClientHTTPError) as refused:
        fal.submit("fal-ai/qwen-image", arguments)
    assert refused.value.status_code == 422
    [item] = refused.value.message
    assert item["loc"] == loc and says in item["msg"] and item["type"] == "value_error"


def test_an_unreadable_image_url_is_a_file_download_error(fal: Any) -> None:
    with serving_files({}) as base, pytest.raises(FalClientHTTPError) as refused:
        fal.submit("fal-ai/qwen-image-edit", {"prompt": "blue", "image_url": f"{base}/missing.png"})
    assert refused.value.status_code == 422 and refused.value.error_type == "file_download_error"
    assert refused.value.message[0]["loc"] == ["body", "image_url"] and "404" in refused.value.message[0]["msg"]


def test_sync_mode_gives_data_uris(fal: Any) -> None:
    out = fal.subscribe("fal-ai/qwen-image", {"prompt": "a fox", "sync_mode": True, "seed": 2, **FAST})
    [image] = out["images"]
    assert image["url"].startswith("data:image/png;base64,") and png_of(image["url"]).size == (256, 256)


def test_run_answers_with_the_output(fal: Any) -> None:
    out = fal.run("fal-ai/qwen-image", {"prompt": "a fox", "seed": 4, **FAST})
    assert out["seed"] == 4 and png_of(out["images"][0]["url"]).size == (256, 256)
    synced = fal.run("fal-ai/qwen-image", {"prompt": "a fox", "seed": 4, "sync_mode": True, **FAST})
    assert synced["images"][0]["url"].startswith("data:image/png;base64,")
    with pytest.raises(FalClientHTTPError) as refused:
        fal.run("fal-ai/qwen-image", {"prompt": ""})
    assert refused.value.status_code == 422 and refused.value.message[0]["loc"] == ["body", "prompt"]


def test_fal_headers_with_no_meaning_here_are_reported_not_applied(fal: Any, live_server: LiveServer) -> None:
    headers = {"Authorization": f"Key {KEY}", "X-Fal-Request-Timeout": "30", "X-Fal-Runner-Hint": "a"}
    body = {"prompt": "a fox", **FAST}
    queued = httpx.post(f"{live_server.url}/fal-ai/qwen-image", json=body, headers=headers, timeout=60).json()
    assert set(queued["not_applied"]) == {"X-Fal-Request-Timeout", "X-Fal-Runner-Hint"}
    ran = httpx.post(f"{live_server.url}/run/fal-ai/qwen-image", json=body, headers=headers, timeout=120).json()
    assert {"X-Fal-Request-Timeout", "X-Fal-Runner-Hint"} <= set(ran["not_applied"])  # with the task's own
    key_only = {"Authorization": f"Key {KEY}"}
    bare = httpx.post(f"{live_server.url}/fal-ai/qwen-image", json=body, headers=key_only, timeout=60)
    assert "not_applied" not in bare.json()  # nothing to report


def test_the_webhook_gets_fals_body(fal: Any) -> None:
    with receiving() as receiver:
        handle = fal.submit("fal-ai/qwen-image", {"prompt": "a fox", "seed": 5, **FAST}, webhook_url=receiver.url)
        out = handle.get()
        wait_for(lambda: receiver.received, bool)
    [(headers, body)] = receiver.received
    hook = json.loads(body)
    assert hook["request_id"] == hook["gateway_request_id"] == handle.request_id
    assert (hook["status"], hook["error"]) == ("OK", None)
    assert hook["payload"]["seed"] == 5 and len(hook["payload"]["images"]) == 1
    assert hook["payload"]["images"][0]["file_name"] == out["images"][0]["file_name"]
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(headers), "our signature"


@pytest.fixture(scope="module")
def keyed(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    data_dir = tmp_path_factory.mktemp("fal-keyed") / "data"
    created = CliRunner().invoke(cli, ["keys", "create", "--name", "fal", "--data-dir", str(data_dir)])
    assert created.exit_code == 0, created.stderr
    with serving(engine, data_dir) as server:
        yield server, created.stdout.strip()


def test_keys_are_sent_as_fal_sends_them(keyed: tuple[LiveServer, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, key = keyed
    point_at(server, monkeypatch)
    with closing(fal_client.SyncClient(key=key[:-2] + "xx")) as wrong, pytest.raises(FalClientHTTPError) as refused:
        wrong.submit("fal-ai/qwen-image", {"prompt": "fox", **FAST})
    assert refused.value.status_code == 401 and "not valid" in str(refused.value)
    monkeypatch.setenv("FAL_KEY", key)
    with closing(fal_client.SyncClient()) as client:  # the key from FAL_KEY, as fal's clients read it
        handle = client.submit("fal-ai/qwen-image", {"prompt": "fox", **FAST})
        handle.get()
        assert client.result("fal-ai/qwen-image", handle.request_id)["images"]


# -- the pure renderings of a request that did not succeed ---------------------------------------


def link(image: StoredImage, task: Task) -> tuple[str, datetime]:
    return f"https://cdn/{image.key}", datetime.now(UTC)


def test_a_failed_request_by_the_fault_of_its_error() -> None:
    urls = RequestUrls.of("http://host/", make_task(TaskStatus.FAILED))
    assert urls.cancel_url == "http://host/fal-ai/qwen-image/requests/task_x/cancel"
    crashed = make_task(TaskStatus.FAILED, TaskError("generation_failed", "out of memory"))
    status = status_out(crashed, None, urls, with_logs=True)
    assert (status.status, status.error, status.error_type) == ("COMPLETED", "out of memory", "runner_server_error")
    assert status.logs and status.logs[-1].level == "ERROR"
    assert error_body(failure_of(crashed)) == (500, {"detail": "out of memory", "error_type": "runner_server_error"})
    withheld = make_task(TaskStatus.FAILED, TaskError("content_withheld", "every image was withheld"))
    code, body = error_body(failure_of(withheld))
    assert code == 422 and body["detail"][0]["type"] == "content_policy_violation"
    hook = callback_payload(withheld, link)
    assert (hook["status"], hook["error"], hook["payload"]) == ("ERROR", "Invalid status code: 422", body)
    with pytest.raises(ValueError, match="only when a task ends"):
        callback_payload(make_task(TaskStatus.RUNNING), link)
