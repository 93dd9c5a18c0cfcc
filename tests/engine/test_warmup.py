"""Warm-up (engine/warmup.py): one short generation per served model and named size, through the
real pipelines with the tiny model; a failure stops the start with the model and size named."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.engine.warmup import WARMUP_STEPS, warmup_requests
from qwen_image_server.errors import EngineSetupError, GenerationFailed
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE

TWO_MODELS = (ModelName.QWEN_IMAGE, ModelName.QWEN_IMAGE_EDIT)


def test_one_request_per_model_and_size_as_requests_default() -> None:
    settings = Settings(**TINY_EVERYWHERE, models=TWO_MODELS, warmup_sizes=("256x256", "1024x768"))
    requests = warmup_requests(settings)
    assert [(r.model, r.width, r.height) for r in requests] == [
        (ModelName.QWEN_IMAGE, 256, 256), (ModelName.QWEN_IMAGE, 1024, 768),
        (ModelName.QWEN_IMAGE_EDIT, 256, 256), (ModelName.QWEN_IMAGE_EDIT, 1024, 768),
    ]  # fmt: skip
    assert all(r.uses_cfg and r.num_images_per_prompt == 1 and r.num_inference_steps == WARMUP_STEPS for r in requests)
    assert [len(r.images) for r in requests] == [0, 0, 1, 1]
    grey = Image.open(io.BytesIO(requests[3].images[0]))
    assert grey.size == (1024, 768) and grey.convert("RGB").getextrema() == ((128, 128),) * 3


def test_with_compile_every_batch_shape_is_warmed() -> None:
    """Batch 1 and batch 2+ compile apart (a size-1 dimension is specialised): CFG on and off, one
    image and two."""
    settings = Settings(**TINY_EVERYWHERE, models=TWO_MODELS, warmup_sizes=("256x256",), compile=True)
    requests = warmup_requests(settings)
    assert [(r.model, r.uses_cfg, r.num_images_per_prompt) for r in requests] == [
        (model, cfg, images) for model in TWO_MODELS for cfg, images in ((True, 1), (False, 1), (True, 2))
    ]
    assert [len(r.images) for r in requests] == [0, 0, 0, 1, 1, 1]


def warm_up_recording_forwards(engine: Engine) -> Counter[tuple[int, int, int]]:
    """Warm `engine` up, counting the transformer's forwards by the output's latent grid (rows and
    columns of 2x2 patches) and how many pictures it sees (2 for an edit: the output and the input)."""
    transformer = engine.pipeline(engine.settings.models[0]).transformer  # tiny: one for all models
    forwards: Counter[tuple[int, int, int]] = Counter()

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        shapes = kwargs["img_shapes"][0]
        forwards[(shapes[0][1], shapes[0][2], len(shapes))] += 1

    handle = transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        engine.warm_up()
    finally:
        handle.remove()
    return forwards


def test_warm_up_runs_the_pipeline_at_each_size() -> None:
    engine = Engine(Settings(**TINY_EVERYWHERE, warmup_sizes=("256x256", "320x256")))
    forwards = warm_up_recording_forwards(engine)
    assert set(forwards) == {(16, 16, 1), (16, 20, 1)}
    assert all(count >= WARMUP_STEPS for count in forwards.values()), forwards


@pytest.mark.slow  # ~25 s: the edit pipeline encodes its input at ~1 megapixel
def test_warm_up_runs_the_edit_models_on_a_grey_picture() -> None:
    engine = Engine(Settings(**TINY_EVERYWHERE, models=TWO_MODELS, warmup_sizes=("256x256",)))
    forwards = warm_up_recording_forwards(engine)
    assert set(forwards) == {(16, 16, 1), (16, 16, 2)}
    assert all(count >= WARMUP_STEPS for count in forwards.values()), forwards


def test_a_failed_warm_up_stops_the_start_naming_model_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(Settings(**TINY_EVERYWHERE, warmup_sizes=("1328x1328",)))

    def broken(request: GenerationRequest) -> None:
        raise GenerationFailed("out of GPU memory; try a smaller size")

    monkeypatch.setattr(engine, "render", broken)
    with pytest.raises(EngineSetupError) as raised:
        engine.warm_up()
    assert raised.value.message == "warm-up of qwen-image at 1328x1328 failed: out of GPU memory; try a smaller size"


def test_no_sizes_no_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(Settings(**TINY_EVERYWHERE))
    monkeypatch.setattr(engine, "render", lambda request: pytest.fail("nothing to warm up"))
    engine.warm_up()
