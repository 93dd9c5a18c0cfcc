"""Inpainting through the real inpaint pipelines, and previews decoded from intermediate steps."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ImageResult
from qwen_image_server.engine import Engine
from qwen_image_server.errors import InvalidParameter
from tests.conftest import picture_bytes


def half_mask(side: str) -> bytes:
    """White (repaint) on one half, black (keep) on the other."""
    mask = Image.new("L", (256, 256), 0)
    box = (0, 0, 128, 256) if side == "left" else (128, 0, 256, 256)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def inpaint(model: str, prompt: str, mask: bytes) -> GenerationRequest:
    return GenerationRequest.create(
        model=model,
        prompt=prompt,
        width=256,
        height=256,
        num_inference_steps=3,
        seed=4,
        images=(picture_bytes((256, 256), (40, 160, 220)),),
        mask=mask,
    )


def test_inpainting_repaints_the_white_area_and_keeps_the_black_one(unmarked_engine: Engine) -> None:
    engine = unmarked_engine
    fox = pixels(engine.generate(inpaint("qwen-image", "a red fox", half_mask("left")))[0].data)
    city = pixels(engine.generate(inpaint("qwen-image", "a city at night", half_mask("left")))[0].data)
    assert fox.shape == (256, 256, 3)
    # The repainted half follows the prompt; the kept half (away from the seam) does not.
    assert np.abs(fox[:, :96] - city[:, :96]).max() > 0
    assert np.abs(fox[:, 192:] - city[:, 192:]).max() <= 2


def test_inpainting_follows_the_asked_size(engine: Engine) -> None:
    request = inpaint("qwen-image", "make it blue", half_mask("right")).model_copy(update={"width": 320})
    [result] = engine.generate(request)
    assert (result.width, result.height) == (320, 256)


@pytest.mark.parametrize(
    ("model", "images"), [("qwen-image-edit-plus", 1), ("qwen-image-edit", 1), ("qwen-image", 2), ("qwen-image", 0)]
)
def test_a_mask_needs_one_image_and_a_maskable_model(model: str, images: int) -> None:
    with pytest.raises(InvalidParameter) as caught:
        GenerationRequest.create(
            model=model, prompt="x", images=(picture_bytes(),) * images, mask=half_mask("left"), seed=1
        )
    assert caught.value.param == "mask"


def test_an_undecodable_mask_is_named() -> None:
    with pytest.raises(InvalidParameter, match="the mask") as caught:
        GenerationRequest.create(model="qwen-image", prompt="x", images=(picture_bytes(),), mask=b"nope", seed=1)
    assert caught.value.param == "mask"


def test_previews_arrive_at_evenly_spread_steps_for_every_image(engine: Engine) -> None:
    request = GenerationRequest.create(
        model="qwen-image", prompt="a fox", width=256, height=256, num_inference_steps=6, seed=2,
        num_images_per_prompt=2, partial_images=2,
    )  # fmt: skip
    assert request.partial_steps() == [2, 4]
    previews: list[ImageResult] = []
    steps_seen: list[int] = []
    results = engine.generate(request, on_step=lambda p: steps_seen.append(p.step), on_partial=previews.append)
    assert [(p.index, p.partial_index) for p in previews] == [(0, 0), (1, 0), (0, 1), (1, 1)]  # made together
    for preview in previews:
        assert Image.open(io.BytesIO(preview.data)).size == (256, 256)
    final = pixels(results[0].data)
    assert not np.array_equal(pixels(previews[0].data), final), "a preview is an intermediate state"
    # Previews change nothing: the final images are those of a run without them.
    plain = engine.generate(request.model_copy(update={"partial_images": 0}))
    assert [pixels(r.data).tolist() for r in plain] == [pixels(r.data).tolist() for r in results]


def test_no_previews_unless_asked(engine: Engine) -> None:
    previews: list[ImageResult] = []
    request = GenerationRequest.create(model="qwen-image", prompt="a fox", width=256, height=256,
                                       num_inference_steps=2, seed=2)  # fmt: skip
    engine.generate(request, on_partial=previews.append)
    assert previews == []


def test_inpainting_at_a_size_off_the_grid_comes_out_at_that_size(engine: Engine) -> None:
    request = inpaint("qwen-image", "make it blue", half_mask("right")).model_copy(update={"width": 301})
    [result] = engine.generate(request)
    assert Image.open(io.BytesIO(result.data)).size == (301, 256) == (result.width, result.height)


def test_each_inpainted_image_is_reproduced_alone_by_its_seed(engine: Engine) -> None:
    two = inpaint("qwen-image", "a red fox", half_mask("left")).model_copy(update={"num_images_per_prompt": 2})
    batch = engine.generate(two)
    for result in batch:
        [alone] = engine.generate(two.model_copy(update={"seed": result.seed, "num_images_per_prompt": 1}))
        assert np.abs(pixels(alone.data) - pixels(result.data)).max() <= 1
