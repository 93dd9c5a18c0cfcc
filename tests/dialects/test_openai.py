"""The official `openai` package, pointed at a running server, generates and edits with the tiny model."""

from __future__ import annotations

import base64
import io
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImageModel, ImagesResponse, image_generate_params
from openai.types.image_generate_params import ImageGenerateParamsBase
from PIL import Image

from qwen_image_server.api.openai import translate
from qwen_image_server.api.openai.schemas import ImageOptions
from qwen_image_server.api.openai.translate import QUALITY_STEPS
from qwen_image_server.domain import ModelName
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


# -- client compatibility: what the current SDK sends -------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-image-2", "chatgpt-image-latest"])
def test_current_openai_model_names_are_accepted(client: openai.OpenAI, model: str) -> None:
    response = client.images.generate(model=model, prompt="a fox", **FAST)  # type: ignore[arg-type]
    assert len(response.data or []) == 1


def test_every_model_name_of_the_sdk_maps_to_ours() -> None:
    served = tuple(ModelName)
    for model in typing.get_args(ImageModel):
        assert translate.generation_model(model) is ModelName.QWEN_IMAGE
        assert translate.edit_model(model, 1, False, served) is ModelName.QWEN_IMAGE_EDIT
        assert translate.edit_model(model, 2, False, served) is ModelName.QWEN_IMAGE_EDIT_PLUS


def test_openai_model_names_map_to_ours_for_edits(client: openai.OpenAI) -> None:
    response = client.images.edit(
        model="gpt-image-2",
        image=("in.png", picture_bytes((96, 96)), "image/png"),
        prompt="blue",
        **FAST,  # type: ignore[arg-type]
    )
    assert len(response.data or []) == 1


@pytest.mark.parametrize(("quality", "answered"), [("xhigh", "xhigh"), ("max", "max"), ("standard", "high")])
def test_new_qualities_are_accepted_and_answered_as_used(client: openai.OpenAI, quality: str, answered: str) -> None:
    response = client.images.generate(prompt="a fox", size="256x256", quality=quality)  # type: ignore[arg-type]
    assert response.quality == answered


@pytest.mark.parametrize(
    ("quality", "steps", "answered"),
    [("low", 20, "low"), ("medium", 30, "medium"), ("high", 50, "high"), ("xhigh", 75, "xhigh"),
     ("max", 100, "max"), ("auto", 50, "high"), ("standard", 50, "high"), ("hd", 50, "high")],
)  # fmt: skip
def test_quality_chooses_the_steps(quality: str, steps: int, answered: str) -> None:
    options = ImageOptions.model_validate({"prompt": "a fox", "quality": quality})
    assert translate.to_generation_request(options, ModelName.QWEN_IMAGE).num_inference_steps == steps
    assert translate.quality_of(options) == answered


def test_style_is_accepted_and_reported_not_applied(client: openai.OpenAI) -> None:
    """It used to be dropped without a word; `user` names the caller and is no option to apply."""
    response = client.images.generate(prompt="a fox", size="256x256", quality="low", style="vivid", user="me")
    noted = set((response.model_extra or {})["not_applied"])
    assert response.data and "style" in noted and "user" not in noted


def literal_values(annotation: Any) -> set[str]:
    """The strings of an `Optional[Literal[...]]`, as the SDK's types declare them."""
    return {value for part in typing.get_args(annotation) for value in typing.get_args(part)}


def test_sdk_qualities_are_all_known() -> None:
    declared = ImageGenerateParamsBase.__annotations__["quality"]  # a forward reference: the module has
    sent = literal_values(eval(declared.__forward_arg__, vars(image_generate_params)))  # `from __future__`
    answered = literal_values(ImagesResponse.model_fields["quality"].annotation)
    assert sent <= set(QUALITY_STEPS) and answered == set(QUALITY_STEPS) - {"auto", "standard", "hd"}


def test_null_optional_fields_mean_the_default(client: openai.OpenAI, live_server: LiveServer) -> None:
    optional = ("model", "n", "quality", "response_format", "output_format", "output_compression", "background",
                "moderation", "partial_images", "style", "user")  # fmt: skip
    nulls: dict[str, Any] = dict.fromkeys(optional)
    url = f"{live_server.url}/v1/images/generations"
    answer = httpx.post(url, json={"prompt": "a fox", "size": "256x256", **nulls, "stream": None}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 1 and answer.json()["quality"] == "high"
    edited = client.images.edit(
        image=("in.png", picture_bytes((96, 96)), "image/png"), prompt="blue", size="256x256", quality="low",
        **dict.fromkeys(("model", "n", "response_format", "output_format", "background", "user")),
    )  # fmt: skip
    assert len(edited.data or []) == 1


def test_empty_multipart_fields_mean_the_default(live_server: LiveServer) -> None:
    """A form has no null: clients that build it from a dict (httpx) send None as an empty field."""
    fields = dict.fromkeys(("model", "n", "response_format", "output_format", "background", "stream"))
    answer = httpx.post(
        f"{live_server.url}/v1/images/edits",
        data={"prompt": "blue", "size": "256x256", "quality": "low", **fields, "partial_images": None},
        files={"image": ("in.png", picture_bytes((96, 96)), "image/png")},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 1 and answer.json()["quality"] == "low"


def test_null_prompt_is_still_required(live_server: LiveServer) -> None:
    answer = httpx.post(f"{live_server.url}/v1/images/generations", json={"prompt": None}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "prompt"


def test_models_retrieve(client: openai.OpenAI) -> None:
    listed = {model.id: model for model in client.models.list()}
    for model_id, model in listed.items():
        assert client.models.retrieve(model_id) == model
    assert client.models.retrieve("qwen-image").object == "model"


def test_models_retrieve_unknown_is_openais_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("sdxl")
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["type"] == "invalid_request_error"
    assert "sdxl" in body["message"]
