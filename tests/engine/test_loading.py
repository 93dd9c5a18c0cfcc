"""Loading straight to the device: which loads use diffusers' device_map, and that a checkpoint
folder loaded that way (here onto the CPU, the device diffusers accepts on this machine) gives the
same components; the transformer's size is known from the files before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwen_image_server.domain import ModelName
from qwen_image_server.engine.loading import ComponentPool, direct_load_device, resolve_checkpoint
from qwen_image_server.engine.residency import module_bytes


@pytest.mark.parametrize(
    ("device", "offload", "expected"),
    [
        ("cuda", "none", "cuda"),
        ("cuda:1", "none", "cuda:1"),
        ("cuda", "model", None),
        ("cuda", "group", None),
        ("cuda", "sequential", None),
        ("cpu", "none", None),
        ("mps", "none", None),
    ],
)
def test_only_unoffloaded_cuda_loads_straight_to_the_device(device: str, offload: str, expected: str | None) -> None:
    target = direct_load_device(torch.device(device), offload)  # type: ignore[arg-type]
    assert target == (torch.device(expected) if expected else None)


def test_fp8_loads_into_host_memory_to_be_quantized_on_its_way_to_the_gpu() -> None:
    # The bf16 transformer whole on a 48 GB card beside the text encoder would not fit.
    assert direct_load_device(torch.device("cuda"), "none", "fp8") is None


def test_fp8_quantizes_before_the_transformer_is_placed(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwen_image_server.engine import devices, speedups
    from qwen_image_server.engine.engine import Engine
    from qwen_image_server.settings import Settings

    order: list[str] = []
    monkeypatch.setattr(speedups, "quantize_fp8", lambda *_: order.append("quantize"))
    monkeypatch.setattr(devices, "place_pipeline", lambda *_, **__: order.append("place"))
    monkeypatch.setattr(speedups, "check_speedups", lambda *_: None)  # FP8 cannot run on a CPU
    Engine(Settings(checkpoint_qwen_image="tiny", quantization="fp8")).load(ModelName.QWEN_IMAGE)
    assert order == ["quantize", "place"]


def states_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, two = first.state_dict(), second.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)


def test_a_folder_loads_the_same_through_a_device_map(tiny_dir: Path, other_checkpoint: Path) -> None:
    plain = ComponentPool(torch.float32, share_components=True)
    mapped = ComponentPool(torch.float32, share_components=True, load_to=torch.device("cpu"))
    for folder in (tiny_dir, other_checkpoint):  # the second reuses the shared encoder and VAE
        checkpoint = resolve_checkpoint(str(folder))
        expected = plain.pipeline(ModelName.QWEN_IMAGE, checkpoint)
        loaded = mapped.pipeline(ModelName.QWEN_IMAGE, checkpoint)
        for name in ("transformer", "text_encoder", "vae"):
            assert states_equal(getattr(loaded, name), getattr(expected, name)), name
        assert states_equal(mapped.fresh_transformer(checkpoint), expected.transformer)
    assert loaded.text_encoder is mapped.pipeline(ModelName.QWEN_IMAGE, resolve_checkpoint(str(tiny_dir))).text_encoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_transformer_size_is_known_before_loading(tiny_dir: Path, dtype: torch.dtype) -> None:
    pool = ComponentPool(dtype, share_components=True)
    checkpoint = resolve_checkpoint(str(tiny_dir))
    estimate = pool.transformer_bytes(checkpoint)
    assert estimate == module_bytes(pool.pipeline(ModelName.QWEN_IMAGE, checkpoint).transformer)
    assert estimate > 0
