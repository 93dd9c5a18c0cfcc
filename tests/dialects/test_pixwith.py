"""Pixwith's task API (`/api/task/...`): the seed document's examples replayed against a real server,
every field of the answers, and the `{code: 0, message}` error envelope.

Pixwith has no size or steps fields: its text-to-image example makes one ~1 MP image at the model's
50 steps, the slowest task here; the image-to-image one keeps its 256x256 input's size.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from qwen_image_server.api.pixwith.schemas import CreateBody
from qwen_image_server.api.pixwith.translate import estimated_time, task_data, to_generation_request
from qwen_image_server.domain import GenerationRequest, ModelName, OutputFormat
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, StoredImage, Task, TaskError, TaskStatus
from tests.conftest import TINY_EVERYWHERE, LiveServer, asgi_client, picture_bytes

CREATE = "/api/task/create"
GET = "/api/task/get"
AUTH = {"Api-Key": "key_00000000000000000000000000000000"}  # the seed's test key
# The seed's two example requests, verbatim except for the image URL (served by the test).
SEED_TEXT_TO_IMAGE: dict[str, Any] = {
    "prompt": "a beautiful landscape with mountains",
    "model_id": "0-24",
    "options": {"prompt_optimization": True, "num_outputs": 1, "aspect_ratio": "16:9"},
}
SEED_IMAGE_TO_IMAGE: dict[str, Any] = {
    "prompt": "turn this into a watercolor painting",
    "image_urls": ["<set by the test>"],
    "model_id": "0-24",
    "options": {"prompt_optimization": True, "num_outputs": 1},
}


# -- helpers -------------------------------------------------------------------------------------


def assert_envelope(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == 1 and body["message"] == "success"
    return body["data"]  # type: ignore[no-any-return]


def assert_error(answer: httpx.Response, status: int, *words: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body.keys() == {"code", "message", "data"} and body["code"] == 0 and body["data"] is None
    assert isinstance(body["message"], str) and body["message"]
    for word in words:
        assert word in body["message"], body["message"]


def run(base: str, body: dict[str, Any], timeout: float = 300) -> tuple[dict[str, Any], set[int]]:
    """Create a task, then poll it as Pixwith documents; return its last data and the statuses seen."""
    created = assert_envelope(httpx.post(base + CREATE, json=body, headers=AUTH, timeout=30))
    assert set(created) == {"task_id", "estimated_time"}
    assert isinstance(created["task_id"], str) and isinstance(created["estimated_time"], int)
    assert created["estimated_time"] > 0
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        data = assert_envelope(httpx.post(base + GET, json={"task_id": created["task_id"]}, headers=AUTH, timeout=30))
        assert data["task_id"] == created["task_id"] and data["status"] in (1, 2, 3)
        assert isinstance(data["result_urls"], list)
        seen.add(data["status"])
        if data["status"] != 1:
            return data, seen
        assert set(data) == {"task_id", "status", "result_urls"} and data["result_urls"] == []
        assert time.monotonic() < deadline, "stuck processing"
        time.sleep(0.1)


def download(url: str) -> Image.Image:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    return Image.open(io.BytesIO(answer.content))


@pytest.fixture(scope="module")
def picture_url() -> Iterator[str]:
    """A 256x256 PNG at an http URL, as Pixwith takes its input images."""
    data = picture_bytes((256, 256), color=(30, 160, 90))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.png"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


# -- against the running server ------------------------------------------------------------------


def test_the_text_to_image_seed_example_replayed_over_http(live_server: LiveServer) -> None:
    data, seen = run(live_server.url, SEED_TEXT_TO_IMAGE)
    assert data["status"] == 2 and seen <= {1, 2}, data
    assert set(data) == {"task_id", "status", "result_urls"}
    [url] = data["result_urls"]
    assert url.startswith(live_server.url)
    assert download(url).size == (1360, 768), "16:9 at about 1 MP"


def test_the_image_to_image_seed_example_replayed_over_http(live_server: LiveServer, picture_url: str) -> None:
    data, _seen = run(live_server.url, {**SEED_IMAGE_TO_IMAGE, "image_urls": [picture_url]})
    assert data["status"] == 2, data
    [url] = data["result_urls"]
    assert download(url).size == (256, 256), "the input's size"


# -- errors, in-process without a worker ---------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = Settings(**TINY_EVERYWHERE, models=("qwen-image", "qwen-image-edit"), data_dir=tmp_path / "data")
    async with Service.build(settings, run_worker=False).running() as service:
        yield service


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(service, headers=AUTH) as client:
        yield client


def t2i(**changes: Any) -> dict[str, Any]:
    """The seed's text-to-image example with `changes` (None removes a field)."""
    options: dict[str, Any] = dict(SEED_TEXT_TO_IMAGE["options"])
    body: dict[str, Any] = {**SEED_TEXT_TO_IMAGE, "options": options}
    for key, value in changes.items():
        target = options if key in ("num_outputs", "aspect_ratio", "prompt_optimization") else body
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (t2i(prompt=None), ["prompt", "required"]),
        (t2i(prompt="  "), ["prompt"]),
        (t2i(model_id="9-99"), ["model_id", "'9-99'"]),
        (t2i(model_id=None), ["model_id"]),
        (t2i(aspect_ratio="1:1"), ["aspect_ratio"]),
        (t2i(num_outputs=5), ["num_outputs"]),
        (t2i(num_outputs=0), ["num_outputs"]),
        ({**SEED_IMAGE_TO_IMAGE, "options": {"aspect_ratio": "16:9"}}, ["aspect_ratio", "text-to-image"]),
        ({**SEED_IMAGE_TO_IMAGE, "image_urls": ["http://a/1.png", "http://a/2.png"]}, ["exactly one"]),
        ({**SEED_IMAGE_TO_IMAGE, "image_urls": ["http://127.0.0.1:9/gone.png"]}, ["input image 1"]),
    ],
)
async def test_bad_create_requests(client: httpx.AsyncClient, body: dict[str, Any], words: list[str]) -> None:
    assert_error(await client.post(CREATE, json=body), 400, *words)


@pytest.mark.anyio
async def test_errors_in_pixwiths_envelope(client: httpx.AsyncClient) -> None:
    text = await client.post(CREATE, content=b'{"prompt": "x"}', headers={"content-type": "text/plain"})
    assert_error(text, 400)
    assert_error(await client.post(CREATE, content=b"{nope", headers={"content-type": "application/json"}), 400, "JSON")
    assert_error(await client.post(GET, json={}), 400, "task_id")
    assert_error(await client.post(GET, json={"task_id": "task_nope"}), 404, "task_nope")
    assert_error(await client.post("/api/task/cancel", json={"task_id": "x"}), 404)
    assert_error(await client.get(GET), 405)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "fox", "model_id": "0-24", "unknown": True},  # Pixwith's required options defaulted
        {"prompt": "fox", "model_id": "0-24", "image_urls": [], "options": {"aspect_ratio": None, "num_outputs": 2}},
        {"prompt": "fox", "model_id": "0-24", "image_urls": None, "options": None},
    ],
)
async def test_lenient_text_to_image_requests(
    client: httpx.AsyncClient, service: Service, body: dict[str, Any]
) -> None:
    task = await service.store.get(assert_envelope(await client.post(CREATE, json=body))["task_id"])
    assert (task.request.width, task.request.height, task.dialect) == (1024, 1024, "pixwith")
    assert task.request.model is ModelName.QWEN_IMAGE and task.request.images == ()


# -- pure translation ----------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ratio", "size"),
    [(None, (1024, 1024)), ("3:4", (880, 1184)), ("9:16", (768, 1360)), ("4:3", (1184, 880)), ("16:9", (1360, 768))],
)
def test_aspect_ratios_are_about_one_megapixel(ratio: str | None, size: tuple[int, int]) -> None:
    request = to_generation_request(CreateBody.model_validate(t2i(aspect_ratio=ratio, num_outputs=3)), ())
    assert (request.width, request.height) == size and request.model is ModelName.QWEN_IMAGE
    assert request.num_images_per_prompt == 3 and request.output_format is OutputFormat.JPEG
    assert request.num_inference_steps == 50 and estimated_time(request) == 45


def test_image_to_image_is_an_edit_at_the_inputs_size() -> None:
    image = picture_bytes((640, 480))
    body = CreateBody.model_validate({**SEED_IMAGE_TO_IMAGE, "options": {"num_outputs": 2}})
    request = to_generation_request(body, (image,))
    assert request.model is ModelName.QWEN_IMAGE_EDIT and request.images == (image,)
    assert (request.width, request.height, request.num_images_per_prompt) == (640, 480, 2)


def made_task(status: TaskStatus, **changes: Any) -> Task:
    request = GenerationRequest.create(model="qwen-image", prompt="fox", width=256, height=256, seed=5)
    task = Task(
        id="task_1", status=status, request=request, dialect="pixwith", owner=None, priority=0,
        callback_url=None, attempts=1, max_attempts=3, progress=Progress(0, 50), results=(), error=None,
        cancel_requested=False, created_at=NOW, started_at=None, finished_at=None, updated_at=NOW,
    )  # fmt: skip
    return replace(task, **changes)


def link(image: StoredImage, task: Task) -> tuple[str, datetime]:
    return f"https://img.example/{image.key}", NOW + timedelta(hours=1)


IMAGES = tuple(StoredImage(f"task_1/{i}.jpg", i, 5 + i, 256, 256, OutputFormat.JPEG, 10, "ab") for i in range(2))


@pytest.mark.parametrize(
    ("status", "changes", "expected"),
    [
        (TaskStatus.QUEUED, {}, (1, [], None)),
        (TaskStatus.RUNNING, {"progress": Progress(3, 50)}, (1, [], None)),
        (TaskStatus.SUCCEEDED, {"results": IMAGES},
         (2, ["https://img.example/task_1/0.jpg", "https://img.example/task_1/1.jpg"], None)),
        (TaskStatus.FAILED, {"error": TaskError("generation_failed", "out of memory")}, (3, [], "out of memory")),
        (TaskStatus.CANCELED, {}, (3, [], "task canceled")),
    ],
)  # fmt: skip
def test_every_state_renders(status: TaskStatus, changes: dict[str, Any], expected: tuple[Any, ...]) -> None:
    data = task_data(made_task(status, **changes), link)
    assert (data.status, data.result_urls, data.error_message) == expected
    assert data.task_id == "task_1"
