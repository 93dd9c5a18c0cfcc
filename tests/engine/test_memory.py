"""After an out-of-memory error the engine frees memory, fails that request with a message naming
the settings that help, and runs the next request (the real pipelines, tiny model, an injected
`torch.OutOfMemoryError`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.engine.memory import oom_message, recover_from_oom
from qwen_image_server.errors import GenerationFailed
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE
from tests.engine.conftest import EDIT, TEXT, two_model_settings


def fox(seed: int = 5) -> GenerationRequest:
    return GenerationRequest.create(
        model="qwen-image", prompt="a fox", width=256, height=256, num_inference_steps=2, seed=seed
    )


class OutOfMemoryOnce:
    """A forward pre-hook that fails the first transformer call the way CUDA does."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, _module: torch.nn.Module, _args: object) -> None:
        if not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.fixture
def engine_that_runs_out_once() -> Iterator[Engine]:
    engine = Engine(Settings(**TINY_EVERYWHERE))
    handle = engine.pipeline(ModelName.QWEN_IMAGE).transformer.register_forward_pre_hook(OutOfMemoryOnce())
    yield engine
    handle.remove()


def test_an_out_of_memory_request_fails_with_the_settings_and_the_next_one_runs(
    engine_that_runs_out_once: Engine, engine: Engine
) -> None:
    with pytest.raises(GenerationFailed) as failure:
        engine_that_runs_out_once.render(fox())
    message = failure.value.message
    for remedy in ("QWEN_IMAGE_OFFLOAD=", "QWEN_IMAGE_QUANTIZATION=fp8", "QWEN_IMAGE_VAE_TILING=true", "smaller size"):
        assert remedy in message
    assert isinstance(failure.value.__cause__, GenerationFailed | torch.OutOfMemoryError)

    [picture] = engine_that_runs_out_once.render(fox())
    [reference] = engine.render(fox())
    assert picture.picture.tobytes() == reference.picture.tobytes()


def test_the_failed_calls_tensors_are_freed() -> None:
    held: list[weakref.ref[torch.Tensor]] = []

    def fail_holding_a_tensor() -> None:
        activations = torch.ones(1000)
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(GenerationFailed) as failure, recover_from_oom(Settings()):
        fail_holding_a_tensor()
    gc.collect()
    assert held[0]() is None  # although the error (and its traceback) is still alive
    assert failure.value.__cause__ is not None


def test_other_errors_pass_through_untouched() -> None:
    with pytest.raises(ValueError, match="not memory"), recover_from_oom(Settings()):
        raise ValueError("not memory")
    with pytest.raises(GenerationFailed, match="the pipeline failed"), recover_from_oom(Settings()):
        raise GenerationFailed("the pipeline failed: boom")


def test_the_message_names_only_settings_not_already_in_use() -> None:
    served_two = Settings(models=(ModelName.QWEN_IMAGE, ModelName.QWEN_IMAGE_EDIT_PLUS), max_batch_size=4)
    assert "QWEN_IMAGE_RESIDENT_MODELS=1" in oom_message(served_two)
    assert "QWEN_IMAGE_MAX_BATCH_SIZE=1" in oom_message(served_two)
    frugal = Settings(offload="sequential", quantization="fp8", vae_tiling=True)
    message = oom_message(frugal)
    assert "QWEN_IMAGE_" not in message
    assert "smaller size" in message
    assert "QWEN_IMAGE_OFFLOAD=sequential" in oom_message(Settings(offload="model"))
    assert "RESIDENT_MODELS" not in oom_message(Settings(offload="model", models=served_two.models))


def test_after_out_of_memory_the_idle_models_leave_the_device(other_checkpoint: Path) -> None:
    engine = Engine(two_model_settings(other_checkpoint))
    engine.load(EDIT)
    engine.pipeline(TEXT).transformer.register_forward_pre_hook(OutOfMemoryOnce())
    assert len(engine.residency_stats().resident) == 2

    with pytest.raises(GenerationFailed, match="QWEN_IMAGE_RESIDENT_MODELS=1"):
        engine.render(fox())

    assert engine.residency_stats().resident == ("tiny",)
    assert engine.render(fox())
