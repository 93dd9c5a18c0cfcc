"""Device, dtype and memory-option wiring. The offload modes run on a GPU only; here we check that
each mode reaches the right diffusers call, through a recording stand-in for the pipeline."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qwen_image_server.engine.devices import check_offload, choose_device, choose_dtype, place_pipeline
from qwen_image_server.errors import CheckpointUnavailable, EngineSetupError


class RecordingPipeline:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def to(self, device: torch.device) -> None:
        self.calls.append(("to", device))

    def enable_model_cpu_offload(self, device: torch.device) -> None:
        self.calls.append(("model", device))

    def enable_sequential_cpu_offload(self, device: torch.device) -> None:
        self.calls.append(("sequential", device))


def test_auto_is_cpu_and_float32_on_this_machine() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    device = choose_device("auto")
    assert device.type == "cpu"
    assert choose_dtype("auto", device) is torch.float32


def test_gpus_default_to_bfloat16_and_explicit_choices_win() -> None:
    assert choose_dtype("auto", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(EngineSetupError, match="float16 is refused"):
        choose_dtype("float16", torch.device("cuda"))
    assert choose_device("cuda:1") == torch.device("cuda:1")


def test_an_unknown_device_is_refused_clearly() -> None:
    with pytest.raises(CheckpointUnavailable, match="unknown device"):
        choose_device("gpu-please")


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
def test_offload_needs_a_gpu(mode: str) -> None:
    with pytest.raises(CheckpointUnavailable, match="GPU"):
        check_offload(mode, torch.device("cpu"))  # type: ignore[arg-type]


def test_group_offload_needs_cuda() -> None:
    with pytest.raises(CheckpointUnavailable, match="CUDA"):
        check_offload("group", torch.device("mps"))
    check_offload("group", torch.device("cuda"))
    check_offload("model", torch.device("mps"))


@pytest.mark.parametrize(("mode", "call"), [("none", "to"), ("model", "model"), ("sequential", "sequential")])
def test_each_mode_reaches_its_diffusers_call(mode: str, call: str) -> None:
    pipeline = RecordingPipeline()
    device = torch.device("cuda")
    place_pipeline(pipeline, device, mode, placed_modules=set())  # type: ignore[arg-type]
    assert pipeline.calls == [(call, device)]
