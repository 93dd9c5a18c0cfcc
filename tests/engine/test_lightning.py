"""`acceleration=high` with a Lightning LoRA configured, through the real pipelines (tiny model, a tiny
LoRA standing in for the lightx2v adapter): its steps, no CFG, its scheduler, and nothing left behind."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import BatchEntry, GenerationRequest, ModelName, StepProgress
from qwen_image_server.engine import Engine
from qwen_image_server.engine.acceleration import LIGHTNING_SCHEDULER
from qwen_image_server.engine.tiny_lora import save_tiny_lora
from qwen_image_server.errors import EngineSetupError, GenerationCanceled, QwenImageError
from qwen_image_server.settings import Settings
from tests.conftest import UNMARKED, picture_bytes


@pytest.fixture(scope="module")
def lightning_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lora(tmp_path_factory.mktemp("lightning") / "lightning.safetensors", seed=11)


@pytest.fixture(scope="module")
def engine(lightning_file: Path) -> Engine:
    lightning = f"qwen-image={lightning_file},qwen-image-edit={lightning_file}"
    return Engine(Settings(**UNMARKED, lightning_loras=lightning, lightning_steps=4))


def request(**fields: Any) -> GenerationRequest:
    base: dict[str, Any] = {"model": "qwen-image", "prompt": "a red fox", "width": 256, "height": 256, "seed": 3}
    return GenerationRequest.create(**(base | {"num_inference_steps": 30, "true_cfg_scale": 4.0} | fields))


def pixels(engine: Engine, ask: GenerationRequest, **hooks: Any) -> np.ndarray:
    [result] = engine.generate(ask, **hooks)
    return np.asarray(Image.open(io.BytesIO(result.data)).convert("RGB"), dtype=np.int16)


def transformer_calls(engine: Engine, model: ModelName = ModelName.QWEN_IMAGE) -> list[int]:
    calls: list[int] = []
    engine.pipeline(model).transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_high_runs_the_lightning_steps_without_cfg(engine: Engine) -> None:
    calls = transformer_calls(engine)
    progress: list[StepProgress] = []
    seen_schedulers: list[dict[str, Any]] = []

    def on_step(step: StepProgress) -> None:
        progress.append(step)
        seen_schedulers.append(dict(engine.pipeline(ModelName.QWEN_IMAGE).scheduler.config))

    pixels(engine, request(acceleration="high"), on_step=on_step)
    assert len(calls) == 4, "4 steps, one transformer call each: no CFG pass"
    assert [step.step for step in progress] == [1, 2, 3, 4] and progress[-1].total == 4
    assert all(config[key] == value for config in seen_schedulers for key, value in LIGHTNING_SCHEDULER.items())
    assert engine.pipeline(ModelName.QWEN_IMAGE).scheduler.config["max_shift"] != LIGHTNING_SCHEDULER["max_shift"]


def test_high_is_the_adapter_fused_at_its_steps_with_its_scheduler(lightning_file: Path, engine: Engine) -> None:
    """The reference made by hand: the adapter fused, 4 steps, CFG off, the Lightning scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = Engine(Settings(**UNMARKED, loras=f"lightning={lightning_file}"))
    pipeline = reference.pipeline(ModelName.QWEN_IMAGE)
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config, **LIGHTNING_SCHEDULER)
    expected = pixels(reference, request(num_inference_steps=4, true_cfg_scale=1.0))
    assert np.abs(pixels(engine, request(acceleration="high")) - expected).max() <= 1


def test_after_high_none_is_untouched(engine: Engine) -> None:
    before = pixels(engine, request(num_inference_steps=4))
    pixels(engine, request(acceleration="high"))
    assert np.array_equal(pixels(engine, request(num_inference_steps=4)), before)
    plain = pixels(Engine(Settings(**UNMARKED)), request(num_inference_steps=4))
    assert np.array_equal(before, plain)


def test_high_on_an_edit_model_runs_its_lightning_in_the_stock_pipeline(engine: Engine) -> None:
    calls = transformer_calls(engine, ModelName.QWEN_IMAGE_EDIT)
    ask = request(model="qwen-image-edit", images=(picture_bytes((256, 256)),), acceleration="high")
    pixels(engine, ask)
    assert len(calls) == 4


def test_high_without_lightning_for_the_model_is_the_cache(engine: Engine) -> None:
    from qwen_image_server.engine.acceleration import plan_for

    plan = plan_for(
        request(model="qwen-image-edit-plus", images=(picture_bytes(),), acceleration="high"), engine.settings
    )
    assert plan.lightning is None and plan.first_block_cache_threshold is not None


# -- Lightning with cancel, previews, batching and image-to-image ------------------------------------


def test_a_canceled_high_call_leaves_no_adapter_or_scheduler_behind(engine: Engine) -> None:
    before = pixels(engine, request(num_inference_steps=4))
    cancel = threading.Event()
    steps: list[int] = []

    def on_step(progress: StepProgress) -> None:
        steps.append(progress.step)
        if progress.step == 2:
            cancel.set()

    with pytest.raises(GenerationCanceled):
        engine.generate(request(acceleration="high"), on_step=on_step, cancel=cancel)
    assert steps == [1, 2]
    pipeline = engine.pipeline(ModelName.QWEN_IMAGE)
    assert pipeline.scheduler.config["max_shift"] != LIGHTNING_SCHEDULER["max_shift"], "its own scheduler again"
    assert np.array_equal(pixels(engine, request(num_inference_steps=4)), before)


def test_high_previews_spread_over_the_lightning_steps(engine: Engine) -> None:
    seen: list[StepProgress] = []
    previews: list[Any] = []
    engine.generate(request(acceleration="high", partial_images=1), on_step=seen.append, on_partial=previews.append)
    assert [p.total for p in seen] == [4] * 4
    assert [p.partial_index for p in previews] == [0], "the preview of the 4 steps that ran, not of the 30 asked"


def test_two_high_requests_share_one_call_and_each_is_its_image_alone(engine: Engine) -> None:
    asks = [request(acceleration="high", seed=1), request(acceleration="high", seed=2, prompt="a city")]
    assert asks[0].batch_key == asks[1].batch_key
    alone = [pixels(engine, ask) for ask in asks]
    calls = transformer_calls(engine)
    outcomes = engine.render_batch([BatchEntry(ask) for ask in asks])
    assert len(calls) == 4, "both requests in each of the 4 Lightning calls"
    for outcome, expected in zip(outcomes, alone, strict=True):
        assert not isinstance(outcome, QwenImageError)
        got = np.asarray(Image.open(io.BytesIO(outcome[0].encode().data)).convert("RGB"), dtype=np.int16)
        assert np.abs(got - expected).max() <= 1


def test_image_to_image_with_high_runs_strength_of_the_lightning_steps(engine: Engine) -> None:
    calls = transformer_calls(engine)
    seen: list[StepProgress] = []
    ask = request(acceleration="high", images=(picture_bytes((256, 256)),), strength=0.5)
    plain = pixels(engine, request(images=(picture_bytes((256, 256)),), strength=0.5, num_inference_steps=4))
    calls.clear()
    lightning = pixels(engine, ask, on_step=seen.append)
    assert len(calls) == 2 and [(p.step, p.total) for p in seen] == [(1, 2), (2, 2)], "0.5 of 4 steps, no CFG"
    assert np.abs(lightning - plain).max() > 10, "the adapter changed the picture"


@pytest.mark.parametrize(
    ("setting", "name", "says"),
    [
        ("lightning_loras", "gone.safetensors", "no file or folder"),
        ("lightning_loras", "weights.bin", "not a .safetensors file (pickle files can run code"),
        ("lightning_loras", "corrupt.safetensors", "not a readable safetensors file"),
        ("request_loras", "gone.safetensors", "no file or folder"),
    ],
)
def test_a_wrong_adapter_file_stops_the_start(tmp_path: Path, setting: str, name: str, says: str) -> None:
    """Not every `high` (or request naming it) failing with 503 later: the engine does not set up."""
    (tmp_path / "weights.bin").write_bytes(b"pickled")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    settings = Settings(**UNMARKED, **{setting: f"qwen-image={tmp_path / name}"})
    with pytest.raises(EngineSetupError, match=rf"^{setting}: LoRA qwen-image.*{re.escape(says)}"):
        Engine(settings).load(ModelName.QWEN_IMAGE)
