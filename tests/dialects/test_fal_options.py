"""fal's model options beyond the base model through fal's own `fal-client`, against a live server with
the tiny model that offers an adapter (`request_loras`), has a tiny Lightning stand-in for `high`
(`lightning_loras`) and downloads adapters from loopback (`allowed_fetch_networks`): `loras` by name
and by URL, `acceleration` and `use_turbo` reaching the stored request, image-to-image with its
`strength`, the 422 of a level or adapter the server cannot give, and a compiled server's defaults."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_image_server.domain import Acceleration, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE
from tests.conftest import TINY_EVERYWHERE, LiveServer, asgi_client, picture_bytes
from tests.dialects.test_fal import FAST, KEY, closing, data_uri, png_of, point_at

fal_client = pytest.importorskip("fal_client")
from fal_client.client import FalClientHTTPError  # noqa: E402

pytestmark = pytest.mark.anyio


@contextmanager
def offering(lora_file: Path, data_dir: Path, **settings: Any) -> Iterator[LiveServer]:
    """A live server (and its own engine) that offers `lora_file` as `style` and downloads adapters
    from loopback; `settings` adds to it."""
    chosen = Settings(
        **TINY_EVERYWHERE,
        **FAST_SERVICE,
        data_dir=data_dir,
        request_loras=f"style={lora_file}",
        allowed_fetch_networks="127.0.0.0/8",
        **settings,
    )
    with LiveServer(chosen, Engine(chosen)) as live:
        yield live


@pytest.fixture(scope="module")
def server(lora_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("fal-options") / "data"
    with offering(lora_file, data_dir, lightning_loras=f"qwen-image={lora_file}", lightning_steps=2) as live:
        yield live


@pytest.fixture
def fal(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    point_at(server, monkeypatch)
    with closing(fal_client.SyncClient(key=KEY)) as client:
        yield client


def native(server: LiveServer, request_id: str) -> dict[str, Any]:
    """The task as the native API shows it: the stored request (what the engine ran) and its progress."""
    answer = httpx.get(f"{server.url}/v1/tasks/{request_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    task: dict[str, Any] = answer.json()
    return task


def test_loras_by_offered_name_and_by_url_run_and_are_stored(fal: Any, server: LiveServer, files: str) -> None:
    loras = [{"path": "style", "scale": 0.9}, {"path": f"{files}/style.safetensors"}]
    handle = fal.submit("fal-ai/qwen-image", {"prompt": "a fox", "loras": loras, **FAST})
    out = handle.get()
    assert png_of(out["images"][0]["url"]).size == (256, 256)
    assert native(server, handle.request_id)["request"]["loras"] == [
        {"name": "style", "path": None, "scale": 0.9},
        {"name": None, "path": f"{files}/style.safetensors", "scale": 1.0},
    ]


def test_a_pickle_adapter_url_fails_as_a_file_download_error(fal: Any, files: str) -> None:
    handle = fal.submit("fal-ai/qwen-image", {"prompt": "a fox", "loras": [{"path": f"{files}/style.bin"}], **FAST})
    with pytest.raises(FalClientHTTPError) as failed:
        handle.get()
    assert failed.value.status_code == 422 and failed.value.error_type == "file_download_error"
    assert "not a safetensors file" in failed.value.message[0]["msg"]


def test_an_adapter_not_offered_is_refused_naming_the_field_sent(fal: Any) -> None:
    loras = [{"path": "style"}, {"path": "nope"}]
    with pytest.raises(FalClientHTTPError) as refused:
        fal.submit("fal-ai/qwen-image", {"prompt": "a fox", "loras": loras, **FAST})
    assert refused.value.status_code == 422
    [item] = refused.value.message
    assert item["loc"] == ["body", "loras", 1, "path"] and "not offered" in item["msg"]


def test_force_is_accepted_and_reported_not_applied(fal: Any, server: LiveServer) -> None:
    body = {"prompt": "a fox", "loras": [{"path": "style", "force": True}], **FAST}
    queued = httpx.post(f"{server.url}/fal-ai/qwen-image", json=body, headers={"Authorization": f"Key {KEY}"})
    assert queued.status_code == 200, queued.text
    assert "loras.0.force" in queued.json()["not_applied"]
    ran = fal.run("fal-ai/qwen-image", body)
    assert "loras.0.force" in ran["not_applied"] and ran["images"]


def test_a_subscriber_gets_what_was_not_applied_in_the_result(fal: Any, server: LiveServer) -> None:
    """`fal_client.subscribe` shows only the result: the notes of acceptance (a header that means
    nothing here, `loras[].force`) must reach it, the status and the native report, not only the
    submit answer."""
    body = {"prompt": "a fox", "loras": [{"path": "style", "force": True}], **FAST}
    queued: list[str] = []
    out = fal.subscribe("fal-ai/qwen-image", body, hint="runner-a", on_enqueue=queued.append)
    assert out["images"] and {"X-Fal-Runner-Hint", "loras.0.force"} <= set(out["not_applied"])  # with the run's
    status = httpx.get(
        f"{server.url}/fal-ai/qwen-image/requests/{queued[0]}/status", headers={"Authorization": f"Key {KEY}"}
    ).json()
    assert status["status"] == "COMPLETED" and status["not_applied"] == out["not_applied"]
    assert native(server, queued[0])["report"]["not_applied"] == out["not_applied"]


@pytest.mark.parametrize(
    ("arguments", "level", "steps_run"),
    [
        ({"acceleration": "regular"}, Acceleration.REGULAR, 3),
        ({"acceleration": "high"}, Acceleration.HIGH, 2),  # the Lightning stand-in's steps
        ({"use_turbo": True}, Acceleration.HIGH, 2),
        ({}, Acceleration.NONE, 3),
    ],
)
def test_acceleration_and_use_turbo_reach_the_stored_request(
    fal: Any, server: LiveServer, arguments: dict[str, Any], level: Acceleration, steps_run: int
) -> None:
    handle = fal.submit("fal-ai/qwen-image", {"prompt": "a fox", **FAST, "num_inference_steps": 3, **arguments})
    assert handle.get()["images"]
    task = native(server, handle.request_id)
    assert (task["request"]["acceleration"], task["progress"]["total"]) == (level, steps_run)


def test_image_to_image_starts_from_the_image_with_its_strength(fal: Any, server: LiveServer) -> None:
    arguments = {"prompt": "a fox", "image_url": data_uri(picture_bytes((128, 96))), "strength": 0.5}
    arguments["num_inference_steps"] = 4
    handle = fal.submit("fal-ai/qwen-image/image-to-image", arguments)
    assert handle.status_url.endswith(f"/fal-ai/qwen-image/requests/{handle.request_id}/status")
    out = handle.get()
    width, height = png_of(out["images"][0]["url"]).size
    assert width > height, "without image_size the input's aspect ratio is kept"
    task = native(server, handle.request_id)
    assert (task["model"], task["request"]["strength"]) == (ModelName.QWEN_IMAGE, 0.5)
    assert task["progress"]["total"] == 2, "0.5 of 4 steps"
    assert fal.result("fal-ai/qwen-image/image-to-image", handle.request_id)["images"]


def test_image_to_image_with_acceleration_and_loras(fal: Any, server: LiveServer) -> None:
    start = data_uri(picture_bytes((96, 96)))
    common = {"prompt": "a fox", "image_url": start, **FAST, "num_inference_steps": 4}
    lightning = fal.submit("fal-ai/qwen-image/image-to-image", {**common, "acceleration": "high"})
    styled = fal.submit("fal-ai/qwen-image/image-to-image", {**common, "loras": [{"path": "style"}]})
    assert lightning.get()["images"] and styled.get()["images"]
    # Each option reached the request the engine ran, on top of image-to-image's strength.
    ran_lightning, ran_styled = native(server, lightning.request_id), native(server, styled.request_id)
    assert ran_lightning["request"]["acceleration"] == "high" and ran_lightning["request"]["strength"] == 0.6
    assert [lora["name"] for lora in ran_styled["request"]["loras"]] == ["style"]
    assert ran_styled["request"]["strength"] == 0.6


@pytest.mark.parametrize(
    ("arguments", "loc"),
    [
        ({"strength": 0}, ["body", "strength"]),
        ({"strength": 1.5}, ["body", "strength"]),
        ({"image_url": "ftp://example.org/a.png"}, ["body", "image_url"]),
    ],
)
def test_image_to_image_input_errors(fal: Any, arguments: dict[str, Any], loc: list[str]) -> None:
    body = {"prompt": "a fox", "image_url": data_uri(picture_bytes()), **arguments}
    with pytest.raises(FalClientHTTPError) as refused:
        fal.submit("fal-ai/qwen-image/image-to-image", body)
    assert refused.value.status_code == 422 and refused.value.message[0]["loc"] == loc


# -- a server that cannot run the cache levels (compile=true) --------------------------------------


@pytest.fixture
async def compiled(tmp_path: Path, engine: Engine) -> Any:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", compile=True)
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service, headers={"Authorization": f"Key {KEY}"}) as http:
        yield service, http


async def test_a_level_the_server_cannot_run_is_fals_422(compiled: Any) -> None:
    service, http = compiled
    for body in ({"acceleration": "regular"}, {"use_turbo": True}):
        refused = await http.post("/fal-ai/qwen-image", json={"prompt": "a fox", **body})
        assert refused.status_code == 422
        [item] = refused.json()["detail"]
        assert item["loc"] == ["body", "acceleration"] and "compile" in item["msg"]
    assert (await service.store.list_tasks()).tasks == []


async def test_an_edit_without_acceleration_runs_none_and_says_so_on_a_compiled_server(compiled: Any) -> None:
    """fal's edit apps default to `regular`, which a compiled server cannot run: the request runs with
    `none` (it was refused with 422 before) and the answer reports the default as not applied."""
    service, http = compiled
    start = data_uri(picture_bytes((64, 64)))
    for app, image in (("qwen-image-edit", {"image_url": start}), ("qwen-image-edit-plus", {"image_urls": [start]})):
        queued = await http.post(f"/fal-ai/{app}", json={"prompt": "make it blue", **image})
        assert queued.status_code == 200, queued.text
        assert "'regular'" in queued.json()["not_applied"]["acceleration"]
        assert (await service.store.get(queued.json()["request_id"])).request.acceleration is Acceleration.NONE
    sent = await http.post("/fal-ai/qwen-image-edit", json={"prompt": "x", "image_url": start, "acceleration": "none"})
    assert sent.status_code == 200 and "not_applied" not in sent.json(), "a level sent is no default"


async def test_a_request_canceled_before_it_ran_still_says_what_was_not_applied(compiled: Any) -> None:
    """No run, no report: the status, the native task and the webhook body still carry the notes of
    acceptance (api/outcome.py `report_of`)."""
    _, http = compiled
    image = {"image_url": data_uri(picture_bytes((64, 64)))}
    queued = (await http.post("/fal-ai/qwen-image-edit", json={"prompt": "make it blue", **image})).json()
    status = (await http.get(queued["status_url"])).json()
    assert status["status"] == "IN_QUEUE" and status["not_applied"] == queued["not_applied"]
    assert (await http.put(queued["cancel_url"])).status_code == 202
    status = (await http.get(queued["status_url"])).json()
    assert status["status"] == "COMPLETED" and status["error_type"] and status["not_applied"] == queued["not_applied"]
    task = (await http.get(f"/v1/tasks/{queued['request_id']}", headers={"Authorization": f"Bearer {KEY}"})).json()
    assert task["status"] == "canceled" and task["report"]["not_applied"] == queued["not_applied"]
