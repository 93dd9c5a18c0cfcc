from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.engine.loading import resolve_checkpoint
from qwen_image_server.engine.tiny import build_tiny_components
from qwen_image_server.errors import CheckpointUnavailable
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_building_twice_gives_the_same_weights() -> None:
    first, second = build_tiny_components(), build_tiny_components()
    for name in ("transformer", "vae", "text_encoder"):
        a, b = _state(first[name]), _state(second[name])
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_the_weights_are_random_not_zero() -> None:
    transformer = build_tiny_components()["transformer"]
    weights = torch.cat([p.flatten() for p in transformer.parameters()])
    assert weights.std() > 0.01


def test_the_saved_folder_is_a_small_diffusers_checkpoint(tiny_dir: Path) -> None:
    names = {path.name for path in tiny_dir.iterdir()}
    assert {"model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler", "processor"} <= names
    size = sum(path.stat().st_size for path in tiny_dir.rglob("*") if path.is_file())
    assert size < 40 * 2**20
    assert not list(tiny_dir.rglob("*.bin")), "weights are saved as safetensors"


def _pixels(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


@pytest.mark.parametrize("model", list(ModelName))
def test_the_saved_folder_gives_the_same_images_as_the_in_memory_model(
    tiny_dir: Path, engine: Engine, model: ModelName
) -> None:
    from tests.conftest import picture_bytes

    images = () if model is ModelName.QWEN_IMAGE else (picture_bytes((96, 96)),)
    request = GenerationRequest.create(
        model=model, prompt="a red fox", width=256, height=256, num_inference_steps=2, seed=5, images=images
    )
    from_folder = Engine(Settings(**{**TINY_EVERYWHERE, f"checkpoint_{model.value.replace('-', '_')}": str(tiny_dir)}))
    a = _pixels(engine.generate(request)[0].data)
    b = _pixels(from_folder.generate(request)[0].data)
    # Reloaded safetensors can differ by ~1e-6 from fresh weights: allow one level of rounding.
    assert np.abs(a - b).max() <= 1


def test_a_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointUnavailable, match=r"model_index\.json"):
        resolve_checkpoint(str(tmp_path))


def test_a_missing_folder_is_not_mistaken_for_a_hub_repo(tmp_path: Path) -> None:
    with pytest.raises(CheckpointUnavailable, match="no checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nope"))
