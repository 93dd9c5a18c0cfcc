"""The official `openai` package, pointed at a running server, generates and edits with the tiny model."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import LiveServer, picture_bytes

FAST = {"size": "256x256", "quality": "low"}


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-anything", max_retries=0, timeout=120) as client:
        yield client


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def rgba_png(size: tuple[int, int], transparent_left: bool) -> bytes:
    picture = Image.new("RGBA", size, (0, 0, 0, 255))
    if transparent_left:
        picture.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_urls(client: openai.OpenAI) -> None:
    response = client.images.generate(model="qwen-image", prompt="a red fox in snow", n=2, **FAST)  # type: ignore[arg-type]
    assert len(response.data) == 2
    assert response.size == "256x256" and response.output_format == "png"
    for image in response.data:
        assert image.url is not None and image.b64_json is None
        assert size_of(httpx.get(image.url, timeout=10).content) == (256, 256)
    assert response.usage is not None and response.usage.output_tokens == 2 * 256


def test_generate_b64_json_with_an_openai_model_name(client: openai.OpenAI) -> None:
    response = client.images.generate(
        model="gpt-image-1",
        prompt="a red fox",
        response_format="b64_json",
        output_format="webp",
        **FAST,  # type: ignore[arg-type]
    )
    [image] = response.data
    assert image.b64_json is not None
    data = base64.b64decode(image.b64_json)
    assert Image.open(io.BytesIO(data)).format == "WEBP"


def test_generate_streams_partial_images_then_the_result(client: openai.OpenAI) -> None:
    stream = client.images.generate(
        model="qwen-image", prompt="a red fox", stream=True, partial_images=2, size="256x256", quality="low"
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]  # type: ignore[union-attr]
    for event in events:
        assert size_of(base64.b64decode(event.b64_json)) == (256, 256)
    assert events[0].b64_json != events[-1].b64_json


def test_edit_one_image(client: openai.OpenAI) -> None:
    response = client.images.edit(
        model="qwen-image-edit",
        image=("in.png", picture_bytes((128, 128)), "image/png"),
        prompt="make it blue",
        **FAST,  # type: ignore[arg-type]
    )
    [image] = response.data
    assert image.url is not None and size_of(httpx.get(image.url, timeout=10).content) == (256, 256)


def test_edit_two_images(client: openai.OpenAI) -> None:
    images = [("a.png", picture_bytes((96, 96), (255, 0, 0)), "image/png"),
              ("b.png", picture_bytes((96, 96), (0, 0, 255)), "image/png")]  # fmt: skip
    response = client.images.edit(image=images, prompt="the two side by side", response_format="b64_json", **FAST)  # type: ignore[arg-type]
    [image] = response.data
    assert size_of(base64.b64decode(image.b64_json or "")) == (256, 256)


def test_edit_with_a_mask_inpaints(client: openai.OpenAI) -> None:
    response = client.images.edit(
        image=("in.png", picture_bytes((256, 256), (30, 200, 90)), "image/png"),
        mask=("mask.png", rgba_png((256, 256), transparent_left=True), "image/png"),
        prompt="a fox on the left",
        response_format="b64_json",
        **FAST,  # type: ignore[arg-type]
    )
    assert size_of(base64.b64decode(response.data[0].b64_json or "")) == (256, 256)


def test_edit_streams_with_its_own_event_names(client: openai.OpenAI) -> None:
    stream = client.images.edit(
        image=("in.png", picture_bytes((96, 96)), "image/png"),
        prompt="blue",
        stream=True,
        partial_images=1,
        **FAST,  # type: ignore[arg-type]
    )
    assert [event.type for event in stream] == ["image_edit.partial_image", "image_edit.completed"]


def test_models_list(client: openai.OpenAI) -> None:
    assert {model.id for model in client.models.list()} >= {"qwen-image", "qwen-image-edit", "qwen-image-edit-plus"}


@pytest.mark.parametrize(
    ("call", "status", "param"),
    [
        (lambda c: c.images.generate(prompt="", **FAST), 400, "prompt"),
        (lambda c: c.images.generate(model="sdxl", prompt="fox", **FAST), 400, "model"),
        (lambda c: c.images.generate(prompt="fox", size="100x100"), 400, "width"),
        (lambda c: c.images.generate(prompt="fox", size="huge"), 400, "size"),
        (lambda c: c.images.generate(prompt="fox", background="transparent", **FAST), 400, "background"),
    ],
)
def test_bad_requests_raise_the_sdk_error_with_openais_shape(
    client: openai.OpenAI, call: object, status: int, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call(client)  # type: ignore[operator]
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == param and body["type"] == "invalid_request_error"


def test_missing_prompt_and_wrong_content_type(live_server: LiveServer) -> None:
    url = f"{live_server.url}/v1/images/generations"
    missing = httpx.post(url, json={"model": "qwen-image"}, timeout=10)
    assert missing.status_code == 400
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.json()["error"]["param"] == "prompt"
    wrong = httpx.post(url, content=b"prompt=fox", headers={"content-type": "text/plain"}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid_request_error"
    edit_json = httpx.post(f"{live_server.url}/v1/images/edits", json={"prompt": "x"}, timeout=10)
    assert edit_json.status_code == 400 and edit_json.json()["error"]["param"] == "image"
    unknown = httpx.get(f"{live_server.url}/v1/images/nothing", timeout=10)
    assert unknown.status_code == 404 and "error" in unknown.json()
