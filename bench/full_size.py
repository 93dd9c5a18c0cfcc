"""Qwen-Image's components at full size with random weights, made directly on a device.

No real checkpoint can be downloaded where the benchmarks run; a random-weight model of the real
shapes times like the real one (the kernels do not look at the values). The transformer is
`gpu_step.FULL` (20.4 B parameters), the text encoder a Qwen2.5-VL-7B (its text model runs the
prompt; the vision tower is built but unused by text-to-image), the VAE the real configuration.
The tokenizer is the tiny model's (prompt token counts differ a little; the prompt length is not
what is measured). `layers` shrinks every depth, so the code can be checked on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.gpu_step import FULL, build_transformer, default_dtype


def full_size_components(device: Any, dtype: Any, *, layers: int | None = None) -> dict[str, Any]:
    """A text-to-image pipeline's components at full width (and full depth unless `layers`)."""
    import dataclasses

    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler

    from qwen_image_server.engine.tiny import QWEN_IMAGE_SCHEDULER_CONFIG
    from qwen_image_server.engine.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    shape = FULL if layers is None else dataclasses.replace(FULL, num_layers=layers)
    transformer = build_transformer(shape, device, dtype)
    with torch.device(device), default_dtype(dtype):
        text_encoder = _text_encoder(tokenizer, layers)
        vae = AutoencoderKLQwenImage()  # the defaults are Qwen-Image's VAE
    return {
        "transformer": transformer,
        "text_encoder": text_encoder.eval().requires_grad_(False),
        "vae": vae.eval().requires_grad_(False),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
    }


def _text_encoder(tokenizer: Any, layers: int | None) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    def token(text: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(text))

    config = Qwen2_5_VLConfig(
        text_config={  # Qwen2.5-VL-7B-Instruct
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": layers or 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "bos_token_id": token("<|endoftext|>"),
            "eos_token_id": token("<|im_end|>"),
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
        },
        vision_config={
            "depth": layers or 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "window_size": 112,
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def use_full_size_components(device: Any, dtype: Any, layers: int | None) -> None:
    """Make the engine's `tiny` checkpoint this full-size random model, for a benchmark's engine. The
    text encoder and VAE are made once and shared by every engine of the process (a benchmark that
    builds one engine per configuration rebuilds only the transformer, which the options change)."""
    import dataclasses

    from diffusers import FlowMatchEulerDiscreteScheduler

    from qwen_image_server.engine import loading
    from qwen_image_server.engine.tiny import QWEN_IMAGE_SCHEDULER_CONFIG

    shared: dict[str, Any] = {}

    def load(self: Any, model: Any, checkpoint: Any) -> dict[str, Any]:
        if not shared:
            components = full_size_components(device, dtype, layers=layers)
            shared.update({name: part for name, part in components.items() if name != "transformer"})
            return components
        shape = FULL if layers is None else dataclasses.replace(FULL, num_layers=layers)
        scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG)
        return {**shared, "transformer": build_transformer(shape, device, dtype), "scheduler": scheduler}

    loading.ComponentPool._load = load  # type: ignore[method-assign]


def engine_settings(args: argparse.Namespace, **extra: Any) -> Any:
    """The `Settings` of a benchmark's engine: the `tiny` checkpoint (full size after
    `use_full_size_components`) on `args`' device and dtype, `extra` on top. The provenance marks are
    off: they are made after the engine (`RenderedPicture.encode`, which no engine benchmark times) and
    need c2pa, cryptography and PyWavelets, which the GPU machine lacks."""
    from qwen_image_server.settings import Settings

    chosen: dict[str, Any] = {"checkpoint_qwen_image": "tiny", "device": args.device, "dtype": args.dtype}
    return Settings(**{**chosen, "c2pa": False, "invisible_watermark": False, **extra})


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options of every benchmark that runs the engine, tiny on a CPU or full size on a GPU."""
    parser.add_argument("--size", type=int, help="square side in pixels [1024; --tiny 256]")
    parser.add_argument("--device", default="cuda", help="a torch device [cuda]")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--layers", type=int, help="full width, fewer blocks and layers (checks the script)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")


def settle_engine_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--tiny runs on the CPU in float32; without it a CUDA device must be there."""
    import torch

    if args.tiny and args.device == "cuda":
        args.device, args.dtype = "cpu", "float32"
    elif torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run with --tiny to check the script on the CPU")
    args.size = args.size or (256 if args.tiny else 1024)


def random_lora_file(folder: Path, seed: int, args: argparse.Namespace, rank: int = 64) -> Path:
    """A random LoRA file for the benchmark's transformer (tiny, or full size: its shapes read from a
    transformer built on the meta device, so no memory is spent), as `folder/lora-SEED.safetensors`."""
    import dataclasses

    import torch

    from qwen_image_server.engine.tiny_lora import random_lora_state_dict, save_lora, tiny_lora_state_dict

    path = folder / f"lora-{seed}.safetensors"
    if args.tiny:
        return save_lora(path, tiny_lora_state_dict(seed, rank=4))
    shape = FULL if args.layers is None else dataclasses.replace(FULL, num_layers=args.layers)
    shapes_only = build_transformer(shape, torch.device("meta"), torch.float32)  # reads in/out features only
    tensors = random_lora_state_dict(shapes_only, seed, rank, strength=0.01)
    return save_lora(path, {name: tensor.to(getattr(torch, args.dtype)) for name, tensor in tensors.items()})
