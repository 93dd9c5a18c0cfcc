"""The tiny safety classifier: a real `ViTForImageClassification` with a small config and seeded weights.

Saved as an ordinary transformers folder (`config.json`, `model.safetensors`, and a
`preprocessor_config.json` naming `ViTImageProcessor`, as the real `Falconsai/nsfw_image_detection`
does), so tests and demos load it through the same code as a real classifier, offline, on a CPU.
Its scores are near 0.5 for every picture (random weights) but deterministic: the weights are drawn
under a fixed seed, without disturbing the caller's random state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

TINY_LABELS: Mapping[int, str] = {0: "normal", 1: "nsfw"}
TINY_SIDE = 32  # pixels the processor resizes every picture to


def build_tiny_safety_checker(labels: Mapping[int, str] = TINY_LABELS, seed: int = 5) -> tuple[Any, Any]:
    """The tiny classifier and its PIL image processor, the same weights for the same labels and seed."""
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config = ViTConfig(
        image_size=TINY_SIDE,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=dict(labels),
        label2id={label: index for index, label in labels.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessorPil(size={"height": TINY_SIDE, "width": TINY_SIDE})
    return model, processor


def save_tiny_safety_checker(folder: Path, labels: Mapping[int, str] = TINY_LABELS) -> Path:
    """Write the tiny classifier to `folder` (created if needed); returns `folder`."""
    model, processor = build_tiny_safety_checker(labels)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder
