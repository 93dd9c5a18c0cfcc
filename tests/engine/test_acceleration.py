"""Acceleration levels through the real pipelines (tiny model): each level runs in our loop (CFG as
one call and as two) and in the stock edit pipeline, skips block computations, leaves nothing
behind for the next call, and keeps batching, cancel, progress and previews working.

The tiny model's random weights move the first block's residual ~30% per step (median, 50 steps at
256x256), far above the thresholds chosen for the real model (0.08, 0.2), so `regular` skips nothing
there and `high` little. Tests of the mechanism set thresholds the tiny model reaches (`tiny_thresholds`);
one test keeps the shipped ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from qwen_image_server.domain import Acceleration, BatchEntry, GenerationRequest, ImageResult, ModelName, StepProgress
from qwen_image_server.engine import Engine, acceleration
from qwen_image_server.errors import GenerationCanceled, InvalidParameter
from qwen_image_server.settings import Settings
from tests.conftest import picture_bytes


def request(**fields: object) -> GenerationRequest:
    base: dict[str, object] = {
        "model": "qwen-image",
        "prompt": "a red fox in snow",
        "width": 256,
        "height": 256,
        "num_inference_steps": 12,
        "seed": 5,
        "true_cfg_scale": 4.0,
    }
    base.update(fields)
    return GenerationRequest.create(**base)


def edit(**fields: object) -> GenerationRequest:
    return request(model="qwen-image-edit", images=(picture_bytes((256, 256)),), num_inference_steps=8, **fields)


def pixels(results: list[ImageResult]) -> list[np.ndarray]:
    import io

    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"), dtype=np.int16) for r in results]


@pytest.fixture
def tiny_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds the tiny model's residuals reach, so that both levels skip blocks on it."""
    for level, threshold in ((Acceleration.REGULAR, 0.3), (Acceleration.HIGH, 0.6)):
        monkeypatch.setitem(acceleration.PLANS, level, acceleration.AccelerationPlan(level, threshold))


@pytest.fixture(scope="module")
def two_pass_engine(tiny_settings: Settings) -> Engine:
    return Engine(tiny_settings.model_copy(update={"cfg_batching": False}))


def counting(engine: Engine, model: ModelName) -> Iterator[list[int]]:
    """How many block computations ran: each block's attention runs only when the block is computed
    (a skipped block returns before it)."""
    count = [0]
    transformer = engine.pipeline(model).transformer
    handles = [
        block.attn.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        for block in transformer.transformer_blocks
    ]
    yield count
    for handle in handles:
        handle.remove()


@pytest.fixture
def blocks(engine: Engine) -> Iterator[list[int]]:
    yield from counting(engine, ModelName.QWEN_IMAGE)


@pytest.fixture
def two_pass_blocks(two_pass_engine: Engine) -> Iterator[list[int]]:
    yield from counting(two_pass_engine, ModelName.QWEN_IMAGE)


@pytest.fixture
def edit_blocks(engine: Engine) -> Iterator[list[int]]:
    yield from counting(engine, ModelName.QWEN_IMAGE_EDIT)


def computed(engine: Engine, blocks: list[int], asked: GenerationRequest) -> tuple[int, list[np.ndarray]]:
    blocks[0] = 0
    images = pixels(engine.generate(asked))
    return blocks[0], images


def hooks_left(engine: Engine, model: ModelName) -> bool:
    return bool(engine.pipeline(model).transformer.is_cache_enabled)


# -- each level runs and skips work ---------------------------------------------------------------


@pytest.mark.usefixtures("tiny_thresholds")
@pytest.mark.parametrize("level", [Acceleration.REGULAR, Acceleration.HIGH])
def test_each_level_skips_blocks_with_cfg_as_one_call(engine: Engine, blocks: list[int], level: Acceleration) -> None:
    full, [reference] = computed(engine, blocks, request())
    fewer, [image] = computed(engine, blocks, request(acceleration=level))
    assert full == 12 * 2  # one call per step of both CFG halves, 2 blocks
    assert fewer < full
    assert np.abs(image - reference).mean() < 40  # the same picture, roughly (random weights: see docs)
    assert not hooks_left(engine, ModelName.QWEN_IMAGE)


@pytest.mark.usefixtures("tiny_thresholds")
def test_each_level_skips_blocks_with_cfg_as_two_calls(two_pass_engine: Engine, two_pass_blocks: list[int]) -> None:
    full, _ = computed(two_pass_engine, two_pass_blocks, request())
    regular, _ = computed(two_pass_engine, two_pass_blocks, request(acceleration="regular"))
    high, _ = computed(two_pass_engine, two_pass_blocks, request(acceleration="high"))
    assert full == 12 * 2 * 2  # cond and uncond calls
    assert high <= regular < full


@pytest.mark.usefixtures("tiny_thresholds")
def test_an_edit_model_runs_each_level_and_skips_blocks(engine: Engine, edit_blocks: list[int]) -> None:
    steps: list[StepProgress] = []
    full, _ = computed(engine, edit_blocks, edit())
    fewer, _ = computed(engine, edit_blocks, edit(acceleration="high"))
    engine.generate(edit(acceleration="regular"), on_step=steps.append)
    assert fewer < full
    assert [p.step for p in steps] == list(range(1, 9))
    assert not hooks_left(engine, ModelName.QWEN_IMAGE_EDIT)


def test_the_shipped_high_threshold_skips_blocks_even_on_the_tiny_model(engine: Engine, blocks: list[int]) -> None:
    full, _ = computed(engine, blocks, request(num_inference_steps=50))
    fewer, _ = computed(engine, blocks, request(num_inference_steps=50, acceleration="high"))
    assert fewer < full


# -- nothing left behind ---------------------------------------------------------------------------


@pytest.mark.usefixtures("tiny_thresholds")
def test_none_after_an_accelerated_call_is_the_none_image_again(engine: Engine, blocks: list[int]) -> None:
    _, [before] = computed(engine, blocks, request())
    _, [accelerated] = computed(engine, blocks, request(acceleration="regular"))
    full, [after] = computed(engine, blocks, request())
    assert not np.array_equal(before, accelerated)  # it did change something
    assert np.array_equal(before, after)
    assert full == 12 * 2


@pytest.mark.usefixtures("tiny_thresholds")
def test_a_canceled_accelerated_call_leaves_no_hooks(engine: Engine) -> None:
    for asked in (request(acceleration="high"), edit(acceleration="high")):
        cancel = threading.Event()

        def stop(progress: StepProgress, cancel: threading.Event = cancel) -> None:
            if progress.step == 3:
                cancel.set()

        with pytest.raises(GenerationCanceled):
            engine.generate(asked, on_step=stop, cancel=cancel)
        assert not hooks_left(engine, asked.model)


# -- batching, cancel, progress and previews -------------------------------------------------------


@pytest.mark.usefixtures("tiny_thresholds")
def test_two_requests_of_one_level_share_the_call_and_one_canceled_leaves_the_other_running(
    engine: Engine, blocks: list[int]
) -> None:
    cancel = threading.Event()
    steps: list[StepProgress] = []
    previews: list[ImageResult] = []

    def stop_at_four(progress: StepProgress) -> None:
        if progress.step == 4:
            cancel.set()

    first = request(acceleration="regular", partial_images=2, num_images_per_prompt=2)
    second = request(acceleration="regular", prompt="a lighthouse at dawn", seed=11)
    assert first.batch_key == second.batch_key != request().batch_key
    blocks[0] = 0
    kept, canceled = engine.render_batch(
        [BatchEntry(first, steps.append, previews.append), BatchEntry(second, stop_at_four, None, cancel)]
    )
    assert isinstance(canceled, GenerationCanceled)
    assert not isinstance(kept, Exception)
    assert len(kept) == 2
    assert [p.step for p in steps] == list(range(1, 13))
    assert sorted({p.partial_index for p in previews}) == [0, 1] and len(previews) == 4
    assert 0 < blocks[0] < 12 * 2  # one call per step for both requests, some blocks skipped


# -- refused where it cannot run -------------------------------------------------------------------


def test_a_compiled_server_refuses_the_cache_levels_naming_acceleration(tiny_settings: Settings) -> None:
    compiled = Engine(tiny_settings.model_copy(update={"compile": True}))
    for level in ("regular", "high"):
        with pytest.raises(InvalidParameter) as refused:
            compiled.validate(request(acceleration=level))
        assert refused.value.param == "acceleration"
        assert "compile" in refused.value.message
    [outcome] = compiled.render_batch([BatchEntry(request(acceleration="regular"))])
    assert isinstance(outcome, InvalidParameter)
