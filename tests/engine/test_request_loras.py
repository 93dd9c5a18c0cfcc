"""Adapters chosen per request (`loras`), through the real pipeline with the tiny model and tiny LoRAs."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import BatchEntry, GenerationRequest, ModelName, StepProgress
from qwen_image_server.engine import Engine
from qwen_image_server.engine.adapters import MAX_LOADED_ADAPTERS
from qwen_image_server.engine.tiny_lora import save_tiny_lora
from qwen_image_server.errors import (
    EngineSetupError,
    GenerationCanceled,
    InvalidParameter,
    LoraUnavailable,
    QwenImageError,
)
from qwen_image_server.settings import Settings
from tests.conftest import UNMARKED, picture_bytes


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("request-loras")
    for seed in range(1, 7):
        save_tiny_lora(folder / f"l{seed}.safetensors", seed=seed)
    return folder


def offering(lora_dir: Path, **settings: Any) -> Engine:
    offered = ",".join(f"l{seed}={lora_dir / f'l{seed}.safetensors'}" for seed in range(1, 7))
    return Engine(Settings(**UNMARKED, request_loras=offered, **settings))


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
    return image(Engine(Settings(**UNMARKED, loras=spec)))


def test_a_then_b_then_none_give_each_alone(engine: Engine, lora_dir: Path) -> None:
    alone_a = fused(lora_dir, f"a={lora_dir / 'l1.safetensors'}")
    alone_b = fused(lora_dir, f"b={lora_dir / 'l2.safetensors'}")
    plain = image(Engine(Settings(**UNMARKED)))
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
    offered = f"c={lora_dir / 'l3.safetensors'}"
    server = Engine(Settings(**UNMARKED, loras=f"a={a},b={b}:0", request_loras=offered))
    with_c = fused(lora_dir, f"a={a},c={lora_dir / 'l3.safetensors'}")
    assert np.abs(image(server, {"name": "c"}) - with_c).max() <= 1
    assert np.abs(image(server) - fused(lora_dir, f"a={a}")).max() <= 1


def test_a_name_the_server_does_not_offer_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidParameter, match="LoRA 'nope' is not offered here; this server offers: l1, l2") as caught:
        engine.generate(request({"name": "nope"}))
    assert caught.value.param == "loras.0.name"


def test_adapters_per_request_are_refused_under_fp8(lora_dir: Path) -> None:
    with pytest.raises(InvalidParameter, match="cannot apply adapters per request: it runs with quantization=fp8"):
        fp8 = Engine(Settings(**UNMARKED, quantization="fp8"))
        fp8.validate(request({"path": "https://x.org/a.safetensors"}))
    with pytest.raises(EngineSetupError, match=r"request_loras .* cannot be combined with compile=true"):
        offering(lora_dir, compile=True).load(ModelName.QWEN_IMAGE)


@pytest.fixture(scope="module")
def lora_server(lora_dir: Path) -> Iterator[str]:
    from tests.unit.local_http import send_body, serving

    def serve(name: str) -> Callable[[Any], None]:
        return lambda handler: send_body(handler, (lora_dir / name).read_bytes())

    routes = {f"/{path.name}": serve(path.name) for path in lora_dir.glob("*.safetensors")}
    truncated = (lora_dir / "l1.safetensors").read_bytes()[:-100]  # a valid header, the tensors cut short
    routes["/truncated.safetensors"] = lambda handler: send_body(handler, truncated)
    with serving(routes) as base:
        yield base


@pytest.fixture(scope="module")
def downloading(lora_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    data = tmp_path_factory.mktemp("data")
    return offering(lora_dir, data_dir=data, allowed_fetch_networks="127.0.0.0/8")


def test_a_url_adapter_gives_the_image_of_the_same_file_offered(downloading: Engine, lora_server: str) -> None:
    by_url = image(downloading, {"path": f"{lora_server}/l2.safetensors", "scale": 0.8})
    assert np.abs(by_url - image(downloading, {"name": "l2", "scale": 0.8})).max() <= 1
    assert list((downloading.settings.data_dir / "lora-cache" / "blobs").glob("*.safetensors"))


def test_a_bad_url_fails_only_its_own_request(downloading: Engine, lora_server: str) -> None:
    urls = [f"{lora_server}/missing.safetensors", f"{lora_server}/truncated.safetensors"]
    asks = [request({"path": urls[0]}), request({"path": urls[1]}), request()]
    missing, truncated, plain = downloading.render_batch([BatchEntry(ask) for ask in asks])
    assert isinstance(missing, LoraUnavailable) and "answered HTTP 404" in missing.message
    assert isinstance(truncated, LoraUnavailable) and "not a readable safetensors file" in truncated.message
    assert not isinstance(plain, QwenImageError)


def test_downloads_off_refuse_urls(lora_dir: Path) -> None:
    with pytest.raises(InvalidParameter, match="does not download adapters") as caught:
        offering(lora_dir, lora_downloads=False).validate(request({"path": "https://example.org/a.safetensors"}))
    assert caught.value.param == "loras.0.path"


def test_two_requests_with_one_adapter_set_share_one_call(engine: Engine) -> None:
    asks = [request({"name": "l1"}, seed=3), request({"name": "l1"}, seed=4, prompt="a city")]
    assert asks[0].batch_key == asks[1].batch_key, "one adapter set: one batch"
    alone = [pixels(engine.generate(ask)[0].data) for ask in asks]
    calls: list[int] = []
    hook = engine.pipeline(ModelName.QWEN_IMAGE).transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        engine.generate(asks[0])
        calls_alone = len(calls)
        calls.clear()
        outcomes = engine.render_batch([BatchEntry(ask) for ask in asks])
    finally:
        hook.remove()
    assert len(calls) == calls_alone, "both requests ride the calls of one"
    for outcome, expected in zip(outcomes, alone, strict=True):
        assert not isinstance(outcome, QwenImageError)
        assert np.abs(pixels(outcome[0].encode().data) - expected).max() <= 1


def test_a_cancel_mid_call_with_adapters_leaves_the_next_call_clean(engine: Engine) -> None:
    plain = image(engine)
    cancel = threading.Event()
    ask = request({"name": "l3"}).model_copy(update={"num_inference_steps": 4})
    with pytest.raises(GenerationCanceled):
        engine.generate(ask, on_step=lambda progress: cancel.set(), cancel=cancel)
    assert np.array_equal(image(engine), plain), "the canceled call's adapter is off again"


def image_to_image(*loras: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest.create(
        model="qwen-image", prompt="a red fox", width=256, height=256, num_inference_steps=4, seed=7,
        images=(picture_bytes((256, 256)),), strength=0.5, loras=loras,
    )  # fmt: skip


def test_image_to_image_with_an_adapter_is_the_fused_servers_image(engine: Engine, lora_dir: Path) -> None:
    reference = Engine(Settings(**UNMARKED, loras=f"a={lora_dir / 'l1.safetensors'}"))
    expected = pixels(reference.generate(image_to_image())[0].data)
    seen: list[StepProgress] = []
    got = pixels(engine.generate(image_to_image({"name": "l1"}), on_step=seen.append)[0].data)
    assert [p.total for p in seen] == [2, 2], "image-to-image: 0.5 of 4 steps"
    assert np.abs(got - expected).max() <= 1
    assert not np.array_equal(got, pixels(engine.generate(image_to_image())[0].data)), "the adapter acted"
