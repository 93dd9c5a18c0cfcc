"""Tiny LoRA adapters for the tiny transformer, built offline (for tests and demos).

A LoRA adds `B @ A` (rank r) to a linear layer's weight. These files hold seeded random `A` and `B`
for the attention projections of every block, in the diffusers key layout
(`transformer.<module path>.lora_A.weight`) that `QwenImagePipeline.load_lora_weights` and our
`engine/loras.py` read. Like the tiny model, their effect on the images is noise, but a visible one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from qwen_image_server.engine.tiny import build_tiny_transformer

# The layers these adapters change; real Qwen-Image LoRAs target these and more.
TINY_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")


def tiny_lora_state_dict(seed: int, rank: int = 4, strength: float = 0.3) -> dict[str, torch.Tensor]:
    """Random low-rank weights for the tiny transformer, the same for the same seed."""
    return random_lora_state_dict(build_tiny_transformer(), seed, rank, strength)


def random_lora_state_dict(
    transformer: torch.nn.Module, seed: int, rank: int, strength: float
) -> dict[str, torch.Tensor]:
    """Random low-rank weights for `transformer`'s attention projections (any size: the benchmarks
    make full-size ones, which time like trained adapters of that rank)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for path, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or not path.endswith(TINY_LORA_TARGETS):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) * strength
        up = torch.randn(module.out_features, rank, generator=generator) * strength
        tensors[f"transformer.{path}.lora_A.weight"] = down.contiguous()
        tensors[f"transformer.{path}.lora_B.weight"] = up.contiguous()
    return tensors


def save_tiny_lora(path: Path, seed: int, rank: int = 4, strength: float = 0.3) -> Path:
    """Write a tiny LoRA to `path` (a `.safetensors` file) and return the path."""
    return save_lora(path, tiny_lora_state_dict(seed, rank, strength))


def save_lora(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
