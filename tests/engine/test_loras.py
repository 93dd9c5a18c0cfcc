"""Server-level LoRA adapters through the real pipeline with the tiny model and tiny LoRA files."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.engine.loading import resolve_checkpoint
from qwen_image_server.engine.tiny_lora import save_tiny_lora
from qwen_image_server.errors import CheckpointUnavailable, EngineSetupError
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    save_tiny_lora(folder / "a.safetensors", seed=1)
    save_tiny_lora(folder / "b.safetensors", seed=2)
    return folder


def image_with(loras: str) -> np.ndarray:
    return image_of(Engine(Settings(**TINY_EVERYWHERE, loras=loras)))


def image_of(engine: Engine, seed: int = 7) -> np.ndarray:
    request = GenerationRequest.create(
        model="qwen-image", prompt="a red fox", width=256, height=256, num_inference_steps=2, seed=seed
    )
    [result] = engine.generate(request)
    return np.asarray(Image.open(io.BytesIO(result.data)).convert("RGB"), dtype=np.int16)


def has_lora_layers(engine: Engine) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    transformer = engine.pipeline(ModelName.QWEN_IMAGE).transformer
    return any(isinstance(module, BaseTunerLayer) for module in transformer.modules())


@pytest.fixture(scope="module")
def plain() -> np.ndarray:
    return image_with("")


def test_an_adapter_changes_the_image(lora_dir: Path, plain: np.ndarray) -> None:
    assert np.abs(image_with(f"a={lora_dir / 'a.safetensors'}") - plain).max() > 10


def test_scale_zero_gives_the_image_without_the_adapter(lora_dir: Path, plain: np.ndarray) -> None:
    assert np.array_equal(image_with(f"a={lora_dir / 'a.safetensors'}:0"), plain)


def test_one_adapter_is_fused_and_matches_the_unfused_adapter(lora_dir: Path, plain: np.ndarray) -> None:
    a, b = lora_dir / "a.safetensors", lora_dir / "b.safetensors"
    fused = Engine(Settings(**TINY_EVERYWHERE, loras=f"a={a}:0.7"))
    unfused = Engine(Settings(**TINY_EVERYWHERE, loras=f"a={a}:0.7,b={b}:0"))  # b off: a alone, as adapters
    assert not has_lora_layers(fused), "one adapter is fused: no LoRA layers left to cost time per step"
    assert has_lora_layers(unfused)
    fused_image, unfused_image = image_of(fused), image_of(unfused)
    assert np.abs(fused_image - plain).max() > 5
    assert np.abs(fused_image - unfused_image).max() <= 1


def test_two_adapters_act_together(lora_dir: Path) -> None:
    a, b = lora_dir / "a.safetensors", lora_dir / "b.safetensors"
    both = image_with(f"a={a},b={b}")
    assert np.abs(both - image_with(f"a={a}")).max() > 5
    assert np.abs(both - image_with(f"b={b}")).max() > 5


def test_a_folder_holding_one_adapter_file_is_read(lora_dir: Path, tmp_path: Path) -> None:
    save_tiny_lora(tmp_path / "pytorch_lora_weights.safetensors", seed=1)
    assert np.array_equal(image_with(f"a={tmp_path}"), image_with(f"a={lora_dir / 'a.safetensors'}"))


def test_a_transformer_loaded_again_gets_the_fused_adapter(lora_dir: Path) -> None:
    """After `evict_to=drop` the transformer is read from its checkpoint again: the adapter must come back."""
    engine = Engine(Settings(**TINY_EVERYWHERE, loras=f"a={lora_dir / 'a.safetensors'}"))
    loaded = engine.pipeline(ModelName.QWEN_IMAGE).transformer.state_dict()
    assert engine._pool is not None
    again = engine._pool.fresh_transformer(resolve_checkpoint("tiny")).state_dict()
    assert loaded.keys() == again.keys()
    assert all(torch.equal(loaded[key], again[key]) for key in loaded)


def load_with(loras: str) -> None:
    Engine(Settings(**TINY_EVERYWHERE, loras=loras)).load(ModelName.QWEN_IMAGE)


def test_a_pickle_file_is_refused_unopened(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointUnavailable, match=r"LoRA evil: .*not a \.safetensors file \(pickle"):
        load_with(f"evil={path}")


def test_a_folder_with_only_pickles_is_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointUnavailable, match=r"LoRA evil: .*holds no \.safetensors file"):
        load_with(f"evil={tmp_path}")


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "disguised.safetensors"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointUnavailable, match=r"LoRA disguised: .*not a readable safetensors file"):
        load_with(f"disguised={path}")


def test_a_truncated_file_is_refused(lora_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes((lora_dir / "a.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointUnavailable, match=r"LoRA cut: .*not a readable safetensors file"):
        load_with(f"cut={path}")


def test_tensors_that_are_not_lora_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"transformer.proj_out.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(CheckpointUnavailable, match=r"LoRA other: .*does not fit this model"):
        load_with(f"other={path}")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointUnavailable, match="LoRA gone: no file or folder"):
        load_with(f"gone={tmp_path / 'gone.safetensors'}")


def test_several_adapters_with_fp8_are_refused_at_start(lora_dir: Path) -> None:
    a, b = lora_dir / "a.safetensors", lora_dir / "b.safetensors"
    refusal = r"loras \(adapters kept unfused\) cannot be combined with quantization=fp8"
    with pytest.raises(EngineSetupError, match=refusal):
        Engine(Settings(**TINY_EVERYWHERE, loras=f"a={a},b={b}", quantization="fp8")).load(ModelName.QWEN_IMAGE)


def test_an_adapter_for_other_layers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.safetensors"
    tensors = {"transformer.nowhere.lora_A.weight": torch.zeros(4, 8)}
    tensors["transformer.nowhere.lora_B.weight"] = torch.zeros(8, 4)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointUnavailable, match=r"LoRA elsewhere: .*does not fit this model: .*not found"):
        load_with(f"elsewhere={path}")


def test_a_repo_id_downloads_only_safetensors(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    save_tiny_lora(tmp_path / "lora.safetensors", seed=1)
    asked: list[tuple[str, object]] = []

    def snapshot(repo_id: str, allow_patterns: object = None) -> str:
        asked.append((repo_id, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert np.array_equal(image_with("a=owner/tiny-lora"), image_with(f"a={lora_dir / 'a.safetensors'}"))
    assert asked == [("owner/tiny-lora", ["*.safetensors"])]


def test_an_unreachable_repo_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(repo_id: str, allow_patterns: object = None) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointUnavailable, match="LoRA remote: could not get owner/remote-lora"):
        load_with("remote=owner/remote-lora")
