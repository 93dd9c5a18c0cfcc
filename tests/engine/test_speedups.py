"""Speed options (engine/speedups.py, engine/attention.py) on the CPU with the tiny model: what is
refused at engine start and with what message, and that the options that run here (attention
backends, compile) make the same images as the default.

Every engine here is pinned to the CPU in float32 so that the images compare the same everywhere.
Images of different attention kernels or compiled code differ by rounding only; they are compared
within MAX_LEVEL_DIFFERENCE levels of 255 (observed: 1).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np
import pytest
import torch

from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine, speedups
from qwen_image_server.engine.speedups import apply_speedups, check_speedups, fp8_config, fp8_layer_filter
from qwen_image_server.engine.tiny import build_tiny_components
from qwen_image_server.errors import EngineSetupError
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
MAX_LEVEL_DIFFERENCE = 2


def settings(**fields: Any) -> Settings:
    return Settings(**TINY_EVERYWHERE, device="cpu", **fields)


def request(width: int = 256) -> GenerationRequest:
    return GenerationRequest.create(
        model="qwen-image", prompt="a red fox in snow", width=width, height=256, num_inference_steps=2, seed=7
    )


def picture(engine: Engine, asked: GenerationRequest) -> np.ndarray:
    [rendered] = engine.render(asked)
    return np.asarray(rendered.picture, dtype=np.int16)


@pytest.fixture(scope="module")
def cpu_engine() -> Engine:
    """The default engine (attention `native`, nothing compiled) on the CPU: the reference images."""
    return Engine(settings())


def refusal(**fields: Any) -> str:
    """The message an engine with these settings stops with, before it loads any weights."""
    engine = Engine(settings(**fields))
    with pytest.raises(EngineSetupError) as raised:
        engine.load(ModelName.QWEN_IMAGE)
    assert engine.loaded() == []
    return raised.value.message


def usable_here(message: str) -> set[str]:
    return set(message.rsplit("sable here: ", 1)[1].split(", "))


# -- attention backends -------------------------------------------------------------------------------


def test_an_unknown_backend_is_refused_naming_the_known_and_the_usable_ones() -> None:
    message = refusal(attention_backend="turbo")
    assert "attention_backend='turbo' is not an attention backend diffusers knows" in message
    assert "_flash_3" in message, "the known backends are listed"
    assert {"native", "_native_math", "flex"} <= usable_here(message)
    assert "_native_cudnn" not in usable_here(message), "cuDNN attention does not run on the CPU"


def test_a_backend_whose_package_is_missing_says_what_to_install() -> None:
    if importlib.util.find_spec("sageattention") is not None:
        pytest.skip("sageattention is installed here")
    message = refusal(attention_backend="sage")
    assert "attention_backend=sage cannot run here" in message
    assert "sageattention" in message, "diffusers' own words on the package to install"
    assert "native" in usable_here(message)


def test_a_backend_for_another_device_is_refused() -> None:
    message = refusal(attention_backend="_native_cudnn")
    assert "_native_cudnn cannot run here: it needs a CUDA GPU; this engine runs on cpu" in message


def test_a_backend_without_masks_is_refused_while_prompts_share_calls() -> None:
    message = refusal(attention_backend="_native_flash")  # cfg_batching is on by default
    assert "takes no attention mask" in message and "cfg_batching=false" in message
    assert "native" in usable_here(message) and "_native_flash" not in usable_here(message)
    assert "takes no attention mask" in refusal(attention_backend="_native_flash", cfg_batching=False, max_batch_size=4)


def test_native_is_what_the_transformer_runs_by_default() -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    stock, ours = build_tiny_components()["transformer"], build_tiny_components()["transformer"]
    apply_speedups(ours, settings(attention_backend="native"), CPU)
    inputs = {
        "hidden_states": torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0)),
        "encoder_hidden_states": torch.randn(2, 5, stock.config.joint_attention_dim),
        "encoder_hidden_states_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool),
        "timestep": torch.full((2,), 0.5),
        "img_shapes": [[(1, 4, 4)]] * 2,
    }
    with torch.inference_mode():
        assert torch.equal(stock(**inputs).sample, ours(**inputs).sample)
    backends = {module.processor._attention_backend.value for module in ours.modules() if hasattr(module, "processor")}
    assert backends == {"native"}
    default_before = _AttentionBackendRegistry.get_active_backend()[0]
    apply_speedups(build_tiny_components()["transformer"], settings(attention_backend="_native_math"), CPU)
    assert _AttentionBackendRegistry.get_active_backend()[0] == default_before, "the process default is left alone"


@pytest.mark.parametrize(
    ("backend", "fields"), [("_native_math", {}), ("_native_flash", {"cfg_batching": False})]
)  # fmt: skip
def test_another_backend_makes_the_same_image(cpu_engine: Engine, backend: str, fields: dict[str, Any]) -> None:
    engine = Engine(settings(attention_backend=backend, **fields))
    difference = np.abs(picture(engine, request()) - picture(cpu_engine, request()))
    assert difference.max() <= MAX_LEVEL_DIFFERENCE


# -- FP8 -------------------------------------------------------------------------------------------------


def test_fp8_is_refused_on_the_cpu_without_importing_torchao() -> None:
    imported_before = "torchao" in sys.modules
    message = refusal(quantization="fp8")
    assert message.startswith("quantization=fp8 needs a CUDA GPU with FP8 matrix units")
    assert "this engine runs on cpu" in message and "quantization=none" in message
    assert ("torchao" in sys.modules) == imported_before


def test_fp8_is_refused_on_a_gpu_older_than_ada(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10")
    with pytest.raises(EngineSetupError, match=r"NVIDIA A10 is 8\.6\. Set quantization=none"):
        check_speedups(settings(quantization="fp8"), CUDA, torch.bfloat16)


def test_fp8_is_refused_with_offload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(EngineSetupError, match="does not combine with offload=model"):
        check_speedups(settings(quantization="fp8", offload="model"), CUDA, torch.bfloat16)


def test_fp8_without_torchao_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an import of a missing package meets
    with pytest.raises(EngineSetupError, match=r"needs torchao .*pip install 'qwen-image-server\[fp8\]'"):
        fp8_config(CUDA)


def test_fp8_takes_the_blocks_linear_layers_except_the_skipped_ones() -> None:
    transformer = build_tiny_components()["transformer"]
    linears = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
    chosen = [name for name, module in transformer.named_modules() if fp8_layer_filter(("img_mlp",))(module, name)]
    assert chosen and all(name.startswith("transformer_blocks.") and "img_mlp" not in name for name in chosen)
    skipped = [name for name in linears if "img_mlp" in name]
    assert skipped and set(chosen) == {n for n in linears if n.startswith("transformer_blocks.")} - set(skipped)
    assert {"img_in", "txt_in", "proj_out"} <= set(linears) - set(chosen), "the entry and exit layers stay"
    every = [name for name, module in transformer.named_modules() if fp8_layer_filter(())(module, name)]
    assert set(skipped) <= set(every)


# -- compile ---------------------------------------------------------------------------------------------


def test_compile_is_refused_without_a_cpp_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import cpp_builder

    def no_compiler() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    assert "compile=true on the CPU needs a C++ compiler" in refusal(compile=True)


def test_compile_is_refused_on_a_gpu_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    with pytest.raises(EngineSetupError, match="compile=true on a GPU needs Triton"):
        check_speedups(settings(compile=True), CUDA, torch.bfloat16)


def test_each_transformer_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    transformer = build_tiny_components()["transformer"]
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(transformer, "compile_repeated_blocks", lambda **options: calls.append(options))
    for _ in range(3):
        apply_speedups(transformer, settings(compile=True), CPU)
    assert calls == [{"fullgraph": True, "dynamic": True}]
    apply_speedups(other := build_tiny_components()["transformer"], settings(compile=True), CPU)
    assert getattr(other, speedups._APPLIED)


@pytest.mark.slow  # about 60 s on 2 CPU cores, nearly all of it inductor compiling the blocks
def test_compiled_images_match_and_other_sizes_compile_nothing_more(cpu_engine: Engine) -> None:
    from torch._dynamo.utils import counters

    engine = Engine(settings(compile=True))
    before = counters["stats"]["unique_graphs"]
    compiled = picture(engine, request())
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > before, "the blocks ran compiled"
    assert np.abs(compiled - picture(cpu_engine, request())).max() <= MAX_LEVEL_DIFFERENCE
    assert np.array_equal(picture(engine, request()), compiled)
    wider = picture(engine, request(width=320))
    assert counters["stats"]["unique_graphs"] == graphs, "dynamic shapes: a new size is not compiled again"
    assert np.abs(wider - picture(cpu_engine, request(width=320))).max() <= MAX_LEVEL_DIFFERENCE


def test_fp8_is_applied_again_after_a_dropped_transformer_is_loaded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # residency.py's `drop` reloads bf16 weights into the same module; the marker that keeps
    # apply_speedups from running twice must not keep it from quantizing those weights again.
    from qwen_image_server.engine import speedups
    from qwen_image_server.engine.tiny import build_tiny_transformer

    quantized: list[object] = []
    monkeypatch.setattr(speedups, "quantize_fp8", lambda module, skip, device: quantized.append(module))
    transformer = build_tiny_transformer()
    settings = Settings(checkpoint_qwen_image="tiny", quantization="fp8")
    speedups.apply_speedups(transformer, settings, torch.device("cpu"))
    speedups.apply_speedups(transformer, settings, torch.device("cpu"))
    assert quantized == [transformer]
    speedups.weights_replaced(transformer)
    speedups.apply_speedups(transformer, settings, torch.device("cpu"))
    assert quantized == [transformer, transformer]
