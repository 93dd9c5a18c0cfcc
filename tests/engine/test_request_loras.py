"""Adapters chosen per request (`loras`), through the real pipeline with the tiny model and tiny LoRAs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import BatchEntry, GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.engine.adapters import MAX_LOADED_ADAPTERS
from qwen_image_server.engine.tiny_lora import save_tiny_lora
from qwen_image_server.errors import EngineSetupError, InvalidParameter, QwenImageError
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("request-loras")
    for seed in range(1, 7):
        save_tiny_lora(folder / f"l{seed}.safetensors", seed=seed)
    return folder


def offering(lora_dir: Path, **settings: Any) -> Engine:
    offered = ",".join(f"l{seed}={lora_dir / f'l{seed}.safetensors'}" for seed in range(1, 7))
    return Engine(Settings(**TINY_EVERYWHERE, request_loras=offered, **settings))


@pytest.fixture(scope="module")
def engine(lora_dir: Path) -> Engine:
    return offering(lora_dir)


def request(*loras: dict[str, Any], seed: int = 7, prompt: str = "a red fox") -> GenerationRequest:
    return GenerationRequest.create(
        model="qwen-image", prompt=prompt, width=256, height=256, num_inference_steps=2, seed=seed, loras=loras
    )


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def image(engine: Engine, *loras: dict[str, Any]) -> np.ndarray:
    [result] = engine.generate(request(*loras))
    return pixels(result.data)


def fused(lora_dir: Path, spec: str) -> np.ndarray:
    """The image of a server with `spec` as its own adapters (fused when one): the reference."""
    return image(Engine(Settings(**TINY_EVERYWHERE, loras=spec)))


def test_a_then_b_then_none_give_each_alone(engine: Engine, lora_dir: Path) -> None:
    alone_a = fused(lora_dir, f"a={lora_dir / 'l1.safetensors'}")
    alone_b = fused(lora_dir, f"b={lora_dir / 'l2.safetensors'}")
    plain = image(Engine(Settings(**TINY_EVERYWHERE)))
    assert np.abs(alone_a - plain).max() > 10 and np.abs(alone_b - alone_a).max() > 10
    seen_a, seen_b, seen_none = image(engine, {"name": "l1"}), image(engine, {"name": "l2"}), image(engine)
    assert np.abs(seen_a - alone_a).max() <= 1
    assert np.abs(seen_b - alone_b).max() <= 1
    assert np.array_equal(seen_none, plain), "no adapter of an earlier request may stay active"


def test_scale_zero_is_no_change(engine: Engine) -> None:
    assert np.array_equal(image(engine, {"name": "l1", "scale": 0}), image(engine))


def test_a_requests_scale_replaces_the_offered_one(engine: Engine, lora_dir: Path) -> None:
    half = fused(lora_dir, f"a={lora_dir / 'l1.safetensors'}:0.5")
    assert np.abs(image(engine, {"name": "l1", "scale": 0.5}) - half).max() <= 1


def test_two_adapters_of_one_request_act_together(engine: Engine, lora_dir: Path) -> None:
    both = fused(lora_dir, f"a={lora_dir / 'l1.safetensors'},b={lora_dir / 'l2.safetensors'}")
    assert np.abs(image(engine, {"name": "l1"}, {"name": "l2"}) - both).max() <= 1


def test_requests_with_other_adapters_in_one_batch_each_get_their_own(engine: Engine) -> None:
    asks = [request({"name": "l1"}, seed=3), request(seed=3), request({"name": "l2"}, seed=3)]
    assert len({ask.batch_key for ask in asks}) == 3, "other adapter sets never share a call"
    batched = engine.render_batch([BatchEntry(ask) for ask in asks])
    for ask, outcome in zip(asks, batched, strict=True):
        assert not isinstance(outcome, QwenImageError)
        [alone] = engine.generate(ask)
        assert np.abs(pixels(outcome[0].encode().data) - pixels(alone.data)).max() <= 1


def test_least_recently_used_adapters_leave_the_transformer(engine: Engine) -> None:
    for seed in range(1, 7):
        image(engine, {"name": f"l{seed}", "scale": 0.1})
    transformer = engine.pipeline(ModelName.QWEN_IMAGE).transformer
    assert sorted(transformer.peft_config) == [f"offered-l{seed}" for seed in range(7 - MAX_LOADED_ADAPTERS, 7)]
    assert np.array_equal(image(engine, {"name": "l1", "scale": 0}), image(engine)), "l1 is loaded again"


def test_server_adapters_stay_on_under_request_adapters(lora_dir: Path) -> None:
    """Several server adapters stay active for every call, a request's adapters are added to them."""
    a, b = lora_dir / "l1.safetensors", lora_dir / "l2.safetensors"
    server = Engine(Settings(**TINY_EVERYWHERE, loras=f"a={a},b={b}:0", request_loras=f"c={lora_dir / 'l3.safetensors'}"))
    with_c = fused(lora_dir, f"a={a},c={lora_dir / 'l3.safetensors'}")
    assert np.abs(image(server, {"name": "c"}) - with_c).max() <= 1
    assert np.abs(image(server) - fused(lora_dir, f"a={a}")).max() <= 1


def test_a_name_the_server_does_not_offer_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidParameter, match="LoRA 'nope' is not offered here; this server offers: l1, l2") as caught:
        engine.generate(request({"name": "nope"}))
    assert caught.value.param == "loras.0.name"


def test_adapters_per_request_are_refused_under_fp8(lora_dir: Path) -> None:
    with pytest.raises(InvalidParameter, match="cannot apply adapters per request: it runs with quantization=fp8"):
        Engine(Settings(**TINY_EVERYWHERE, quantization="fp8")).validate(request({"path": "https://x.org/a.safetensors"}))
    with pytest.raises(EngineSetupError, match="request_loras .* cannot be combined with compile=true"):
        offering(lora_dir, compile=True).load(ModelName.QWEN_IMAGE)
