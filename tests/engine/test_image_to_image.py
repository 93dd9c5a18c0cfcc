"""Image-to-image (qwen-image with one input image, no mask) through the real
QwenImageImg2ImgPipeline with the tiny model, and `strength` on inpainting.

The tiny model's random VAE makes every picture look much alike, so "close to the input" is measured
as the input's influence: two different inputs give outputs that differ the more, the lower the
strength (and not at all at strength 1, which starts from pure noise)."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ImageResult, ModelName, PipelineMode, StepProgress
from qwen_image_server.engine import Engine
from qwen_image_server.errors import GenerationCanceled
from tests.engine.test_inpaint_and_previews import half_mask


def gradient(inverted: bool = False) -> bytes:
    ramp = np.linspace(0, 255, 256)
    array = np.stack([np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)), np.full((256, 256), 90.0)], -1)
    if inverted:
        array = 255 - array
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def img2img(**fields: object) -> GenerationRequest:
    base: dict[str, object] = {"model": "qwen-image", "prompt": "a red fox", "width": 256, "height": 256,
                               "num_inference_steps": 4, "seed": 3, "images": (gradient(),)}  # fmt: skip
    base.update(fields)
    return GenerationRequest.create(**base)


def made(engine: Engine, request: GenerationRequest) -> np.ndarray:
    return pixels(engine.generate(request)[0].data)


def test_image_to_image_runs_its_own_pipeline_on_the_shared_weights(engine: Engine) -> None:
    text = engine.pipeline(ModelName.QWEN_IMAGE)
    image = engine.pipeline(ModelName.QWEN_IMAGE, PipelineMode.IMAGE_TO_IMAGE)
    assert type(image).__name__ == "QwenImageImg2ImgPipeline"
    assert image.transformer is text.transformer and image.vae is text.vae


def test_image_to_image_differs_from_text_to_image_of_the_same_seed(engine: Engine) -> None:
    request = img2img(strength=0.5)
    text = made(engine, request.model_copy(update={"images": (), "input_image_count": 0, "strength": None}))
    assert np.abs(made(engine, request) - text).mean() > 0.5


def test_a_low_strength_follows_the_input_more_than_a_high_one(engine: Engine) -> None:
    def input_influence(strength: float) -> float:
        one = made(engine, img2img(strength=strength))
        other = made(engine, img2img(strength=strength, images=(gradient(inverted=True),)))
        return float(np.abs(one - other).mean())

    low, high = input_influence(0.25), input_influence(0.75)
    assert low > 2 * high > 0


def test_full_strength_starts_from_noise_alone(engine: Engine) -> None:
    one = made(engine, img2img(strength=1.0, num_inference_steps=2))
    other = made(engine, img2img(strength=1.0, num_inference_steps=2, images=(gradient(inverted=True),)))
    assert np.array_equal(one, other)


def test_each_image_is_reproduced_alone_by_its_seed(engine: Engine) -> None:
    pair = engine.generate(img2img(strength=0.5, num_images_per_prompt=2, num_inference_steps=2))
    assert not np.array_equal(pixels(pair[0].data), pixels(pair[1].data))
    for result in pair:
        [alone] = engine.generate(img2img(strength=0.5, seed=result.seed, num_inference_steps=2))
        # Rows of a batch round their matrix products differently from a batch of one (docs/engine.md).
        assert np.abs(pixels(alone.data) - pixels(result.data)).max() <= 1


def test_the_output_is_the_asked_size_whatever_the_input(engine: Engine) -> None:
    [result] = engine.generate(img2img(width=300, height=256, strength=0.5, num_inference_steps=2))
    assert Image.open(io.BytesIO(result.data)).size == (300, 256) == (result.width, result.height)


def test_progress_counts_the_steps_that_run_and_previews_spread_over_them(engine: Engine) -> None:
    request = img2img(num_inference_steps=8, strength=0.5, partial_images=1)
    assert request.denoising_steps == 4 and request.partial_steps() == [2]
    seen: list[StepProgress] = []
    previews: list[ImageResult] = []
    engine.generate(request, on_step=seen.append, on_partial=previews.append)
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[-1].percent == 100.0
    assert [p.partial_index for p in previews] == [0]


def test_inpainting_honours_strength_and_counts_its_steps(engine: Engine) -> None:
    request = img2img(mask=half_mask("left"), num_inference_steps=4)
    assert request.strength == 1.0
    seen: list[StepProgress] = []
    full = made(engine, request)
    half = pixels(engine.generate(request.model_copy(update={"strength": 0.5}), on_step=seen.append)[0].data)
    assert [(p.step, p.total) for p in seen] == [(1, 2), (2, 2)]
    assert np.abs(full[:, :96] - half[:, :96]).mean() > 0.1  # the repainted half starts from the input


def test_cancel_stops_image_to_image_at_the_next_step(engine: Engine) -> None:
    cancel = threading.Event()
    steps: list[int] = []

    def on_step(progress: StepProgress) -> None:
        steps.append(progress.step)
        cancel.set()

    with pytest.raises(GenerationCanceled):
        engine.generate(img2img(strength=0.75), on_step=on_step, cancel=cancel)
    assert steps == [1]


@pytest.mark.parametrize("level", ["regular", "high"])
def test_image_to_image_with_a_cache_level_runs_its_steps_and_leaves_no_hooks(engine: Engine, level: str) -> None:
    seen: list[StepProgress] = []
    engine.generate(img2img(num_inference_steps=8, strength=0.5, acceleration=level), on_step=seen.append)
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert not engine.pipeline(ModelName.QWEN_IMAGE).transformer.is_cache_enabled
