"""Fixtures of the engine tests: a second tiny checkpoint, with other transformer weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qwen_image_server.domain import ModelName
from qwen_image_server.settings import Settings

TEXT = ModelName.QWEN_IMAGE
EDIT = ModelName.QWEN_IMAGE_EDIT_PLUS


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved to a folder with different transformer weights, so that a transformer
    coming back with the other model's weights would show in the images."""
    from diffusers import QwenImageTransformer2DModel

    from qwen_image_server.engine.tiny import save_tiny_model

    folder = tmp_path_factory.mktemp("other-tiny")
    save_tiny_model(folder)
    transformer = QwenImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    transformer.save_pretrained(folder / "transformer")
    return folder


def two_model_settings(folder: Path, **options: Any) -> Settings:
    return Settings(
        checkpoint_qwen_image="tiny",
        checkpoint_qwen_image_edit_plus=str(folder),
        models=(TEXT, EDIT),
        **options,
    )
