"""Editing through the real QwenImageEditPipeline and QwenImageEditPlusPipeline with the tiny model."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from qwen_image_server.domain import GenerationRequest, StepProgress
from qwen_image_server.engine import Engine
from tests.conftest import picture_bytes


def edit(model: str, images: tuple[bytes, ...], **fields: object) -> GenerationRequest:
    base: dict[str, object] = {
        "model": model,
        "prompt": "make it blue",
        "width": 256,
        "height": 256,
        "num_inference_steps": 2,
        "seed": 3,
        "images": images,
    }
    base.update(fields)
    return GenerationRequest.create(**base)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_edit_one_image(engine: Engine) -> None:
    steps: list[StepProgress] = []
    [result] = engine.generate(edit("qwen-image-edit", (picture_bytes((200, 160)),)), on_step=steps.append)
    assert Image.open(io.BytesIO(result.data)).size == (256, 256)
    assert [p.step for p in steps] == [1, 2]


def test_the_input_image_changes_the_output(engine: Engine) -> None:
    red = engine.generate(edit("qwen-image-edit", (picture_bytes((128, 128), (255, 0, 0)),)))[0].data
    green = engine.generate(edit("qwen-image-edit", (picture_bytes((128, 128), (0, 255, 0)),)))[0].data
    assert not np.array_equal(pixels(red), pixels(green))


def test_edit_plus_combines_two_images_and_each_input_counts(engine: Engine) -> None:
    red, green = picture_bytes((128, 96), (255, 0, 0)), picture_bytes((96, 128), (0, 255, 0))
    both = engine.generate(edit("qwen-image-edit-plus", (red, green)))[0].data
    swapped = engine.generate(edit("qwen-image-edit-plus", (green, red)))[0].data
    assert Image.open(io.BytesIO(both)).size == (256, 256)
    assert not np.array_equal(pixels(both), pixels(swapped))


def test_edit_is_reproducible_by_seed(engine: Engine) -> None:
    source = (picture_bytes((128, 128), (10, 200, 90)),)
    first = engine.generate(edit("qwen-image-edit", source, seed=11))[0].data
    again = engine.generate(edit("qwen-image-edit", source, seed=11))[0].data
    assert np.array_equal(pixels(first), pixels(again))


def test_edit_without_a_size_follows_the_input_aspect(engine: Engine) -> None:
    # 2:1 input -> about 1 MP at 2:1; the tiny model makes this in a few seconds on a CPU.
    request = GenerationRequest.create(
        model="qwen-image-edit",
        prompt="make it blue",
        num_inference_steps=2,
        seed=1,
        images=(picture_bytes((400, 200)),),
    )
    [result] = engine.generate(request)
    assert (result.width, result.height) == (request.width, request.height)
    assert abs(result.width / result.height - 2.0) < 0.05
    assert 0.95e6 < result.width * result.height < 1.1e6


def test_edits_at_a_size_off_the_grid_come_out_at_that_size(engine: Engine) -> None:
    # The edit pipelines round such a size down; the engine asks them for the next size up and crops.
    for model in ("qwen-image-edit", "qwen-image-edit-plus"):
        [result] = engine.generate(edit(model, (picture_bytes((200, 160)),), width=300, height=259))
        assert Image.open(io.BytesIO(result.data)).size == (300, 259) == (result.width, result.height)
