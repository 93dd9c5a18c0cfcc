"""Choosing where the model runs, in what precision, and how it saves memory."""

from __future__ import annotations

from typing import Any

import torch

from qwen_image_server.errors import CheckpointUnavailable, EngineSetupError
from qwen_image_server.settings import FLOAT16_REFUSED, DType, Offload

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # float16: refused (FLOAT16_REFUSED)


def choose_device(requested: str) -> torch.device:
    if requested != "auto":
        try:
            return torch.device(requested)
        except RuntimeError:
            raise CheckpointUnavailable(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(requested: DType, device: torch.device) -> torch.dtype:
    if requested == "float16":  # Settings refuses it already; this guards direct callers
        raise EngineSetupError(FLOAT16_REFUSED)
    if requested != "auto":
        return _DTYPES[requested]
    # bf16 halves memory and is what the weights ship in; CPUs run fp32 far faster than bf16.
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def check_offload(offload: Offload, device: torch.device) -> None:
    if offload != "none" and device.type == "cpu":
        raise CheckpointUnavailable(f"offload={offload} moves weights between the CPU and a GPU; it needs a GPU device")
    if offload == "group" and device.type != "cuda":
        raise CheckpointUnavailable("offload=group needs a CUDA device (it prefetches on a CUDA stream)")


def place_pipeline(pipeline: Any, device: torch.device, offload: Offload, *, placed_modules: set[int]) -> None:
    """Put `pipeline` on `device` under the chosen memory scheme.

    Model and sequential offload install hooks per pipeline; pipelines share the text encoder and
    VAE, so those hooks are (re)installed each time another pipeline becomes the active one.
    Group offload hooks live on the modules themselves and are applied once per module
    (`placed_modules` remembers which).
    """
    if offload == "none":
        pipeline.to(device)
    elif offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        _apply_group_offload(pipeline, device, placed_modules)


def _apply_group_offload(pipeline: Any, device: torch.device, placed_modules: set[int]) -> None:
    from diffusers.hooks import apply_group_offloading

    for name in ("transformer", "text_encoder", "vae"):
        module = getattr(pipeline, name)
        if id(module) in placed_modules:
            continue
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
        placed_modules.add(id(module))
