"""Text-to-image through the real QwenImagePipeline with the tiny model."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ImageResult, ModelName, OutputFormat, StepProgress
from qwen_image_server.engine import Engine
from qwen_image_server.errors import GenerationCanceled, PromptTooLong


def request(**fields: object) -> GenerationRequest:
    base: dict[str, object] = {
        "model": "qwen-image",
        "prompt": "a red fox in snow",
        "width": 256,
        "height": 256,
        "num_inference_steps": 2,
        "seed": 7,
    }
    base.update(fields)
    return GenerationRequest.create(**base)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_makes_an_image_of_the_asked_size(engine: Engine) -> None:
    [result] = engine.generate(request(width=320, height=256))
    image = Image.open(io.BytesIO(result.data))
    assert image.format == "PNG"
    assert image.size == (320, 256) == (result.width, result.height)
    assert result.seed == 7
    assert pixels(result.data).std() > 1, "the pipeline produced a picture, not a flat fill"


def test_the_same_seed_gives_the_same_pixels_and_another_seed_other_pixels(engine: Engine) -> None:
    first = engine.generate(request())[0].data
    again = engine.generate(request())[0].data
    other = engine.generate(request(seed=8))[0].data
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_each_image_of_a_batch_is_reproduced_alone_by_its_seed(engine: Engine) -> None:
    batch = engine.generate(request(num_images_per_prompt=2, seed=40))
    assert [result.seed for result in batch] == [40, 41]
    assert not np.array_equal(pixels(batch[0].data), pixels(batch[1].data))
    for result in batch:
        # The rows of a batch round their matrix products differently from a batch of one: the
        # latents agree to ~2e-6 (tests/engine/test_batching.py), pixels to one level at most.
        [alone] = engine.generate(request(seed=result.seed))
        assert np.abs(pixels(alone.data) - pixels(result.data)).max() <= 1


def test_rendered_pictures_are_encoded_later_on_another_thread_to_the_same_images(engine: Engine) -> None:
    # The worker's path: the engine hands pictures back unencoded and runs the next request while
    # they are encoded elsewhere; the encoded images are those `generate` makes.
    asked = request(num_images_per_prompt=2, seed=40, output_format="webp", output_quality=90)
    rendered = engine.render(asked)
    assert [(picture.index, picture.seed, picture.picture.size) for picture in rendered] == [
        (0, 40, (256, 256)),
        (1, 41, (256, 256)),
    ]
    engine.generate(request(seed=3))  # the engine is free for the next request meanwhile
    encoded: list[ImageResult] = []
    encoder = threading.Thread(target=lambda: encoded.extend(picture.encode() for picture in rendered))
    encoder.start()
    encoder.join()
    expected = engine.generate(asked)
    assert [(result.output_format, result.seed, result.index) for result in encoded] == [
        (OutputFormat.WEBP, 40, 0),
        (OutputFormat.WEBP, 41, 1),
    ]
    for got, made in zip(encoded, expected, strict=True):
        assert np.array_equal(pixels(got.data), pixels(made.data))


def test_the_prompt_matters(engine: Engine) -> None:
    fox = engine.generate(request())[0].data
    city = engine.generate(request(prompt="a city at night"))[0].data
    assert not np.array_equal(pixels(fox), pixels(city))


def test_cfg_and_the_negative_prompt_change_the_image(engine: Engine) -> None:
    plain = pixels(engine.generate(request(true_cfg_scale=1.0))[0].data)
    guided = pixels(engine.generate(request(true_cfg_scale=4.0))[0].data)
    negative = pixels(engine.generate(request(true_cfg_scale=4.0, negative_prompt="blurry"))[0].data)
    assert not np.array_equal(plain, guided)
    assert not np.array_equal(guided, negative)


@pytest.mark.parametrize(("fmt", "pil_name"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats(engine: Engine, fmt: str, pil_name: str) -> None:
    [result] = engine.generate(request(output_format=fmt, output_quality=80))
    assert Image.open(io.BytesIO(result.data)).format == pil_name
    assert result.content_type == OutputFormat(fmt).content_type


def test_progress_is_reported_after_every_step_of_the_images_made_together(engine: Engine) -> None:
    seen: list[StepProgress] = []
    engine.generate(request(num_inference_steps=3, num_images_per_prompt=2), on_step=seen.append)
    assert [(p.step, p.total, p.image_index) for p in seen] == [(1, 3, 1), (2, 3, 1), (3, 3, 1)]
    assert seen[-1].percent == 100.0


def test_cancel_stops_at_the_next_step_and_decodes_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    cancel = threading.Event()
    steps: list[int] = []
    decoded: list[int] = []
    vae = engine.pipeline(ModelName.QWEN_IMAGE).vae
    original_decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda *a, **k: decoded.append(1) or original_decode(*a, **k))

    def on_step(progress: StepProgress) -> None:
        steps.append(progress.step)
        if progress.step == 2:
            cancel.set()

    with pytest.raises(GenerationCanceled):
        engine.generate(request(num_inference_steps=6), on_step=on_step, cancel=cancel)
    assert steps == [1, 2]
    assert decoded == []


def test_a_cancel_before_the_start_runs_nothing(engine: Engine) -> None:
    cancel = threading.Event()
    cancel.set()
    steps: list[StepProgress] = []
    with pytest.raises(GenerationCanceled):
        engine.generate(request(), on_step=steps.append, cancel=cancel)
    assert steps == []


def test_a_prompt_over_the_token_limit_is_refused_before_any_step(engine: Engine) -> None:
    steps: list[StepProgress] = []
    long_prompt = "fox " * 600
    assert engine.count_tokens(ModelName.QWEN_IMAGE, long_prompt) > 512
    with pytest.raises(PromptTooLong, match="512 tokens") as caught:
        engine.generate(request(prompt=long_prompt), on_step=steps.append)
    assert caught.value.param == "prompt"
    assert steps == []
    with pytest.raises(PromptTooLong):
        engine.generate(request(negative_prompt=long_prompt))


def test_max_sequence_length_sets_the_token_limit(engine: Engine) -> None:
    with pytest.raises(PromptTooLong, match="8 tokens"):
        engine.generate(request(prompt="a red fox in snow under a pale moon at night", max_sequence_length=8))


def test_the_models_share_one_text_encoder_and_vae(engine: Engine) -> None:
    pipelines = [engine.pipeline(model) for model in ModelName]
    assert len({id(p.text_encoder) for p in pipelines}) == 1
    assert len({id(p.vae) for p in pipelines}) == 1
    assert {m.name for m in engine.loaded()} == set(ModelName)


def centre(picture: np.ndarray, width: int, height: int) -> np.ndarray:
    top, left = (picture.shape[0] - height) // 2, (picture.shape[1] - width) // 2
    return picture[top : top + height, left : left + width]


def test_a_size_off_the_16_pixel_grid_is_the_centre_of_the_next_size_up(unmarked_engine: Engine) -> None:
    engine = unmarked_engine
    # 270x257 is made at 272x272 (each side rounded up to the model's multiple of 16) and cropped:
    # exactly the asked size, the pixels of the larger picture with the same seed, nothing resampled.
    [asked] = engine.generate(request(width=270, height=257, seed=11))
    [made] = engine.generate(request(width=272, height=272, seed=11))
    assert Image.open(io.BytesIO(asked.data)).size == (270, 257) == (asked.width, asked.height)
    assert np.array_equal(pixels(asked.data), centre(pixels(made.data), 270, 257))


def test_previews_of_a_size_off_the_grid_are_the_asked_size_too(unmarked_engine: Engine) -> None:
    engine = unmarked_engine
    previews: list[ImageResult] = []
    asked = request(width=263, height=300, num_inference_steps=3, partial_images=1, seed=12)
    [result] = engine.generate(asked, on_partial=previews.append)
    [made] = engine.generate(request(width=272, height=304, num_inference_steps=3, partial_images=1, seed=12))
    [preview] = previews
    assert Image.open(io.BytesIO(preview.data)).size == (263, 300) == (preview.width, preview.height)
    assert (result.width, result.height) == (263, 300)
    assert np.array_equal(pixels(result.data), centre(pixels(made.data), 263, 300))
