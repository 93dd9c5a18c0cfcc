"""Speed options for the transformer: FP8 weights, the attention kernel, torch.compile.

`check_speedups` runs once when the engine starts, before any weights load, and refuses with an
`EngineSetupError` what this machine cannot do (a backend or package missing, a GPU too old, no
compiler), naming the setting and what would work; a setting that cannot work stops the start
instead of failing every request.

`apply_speedups` runs once per transformer, once it is on its device, in this order:

1. FP8 (torchao's dynamic float8 quantization) of the linear layers of the repeated blocks, where
   nearly all the weights are; the embeddings and the output projection, which touch the latents
   directly, stay in bf16, and so do the layers named in `fp8_skip` (by default `img_mlp`, which
   vLLM-Omni also keeps in bf16 for quality). It goes first so that compilation traces the
   quantized layers.
2. The attention backend, set on the transformer's processors (set before compiling: the backend
   is read while tracing).
3. Regional compilation (`compile_repeated_blocks`): the 60 identical blocks compile once and share
   the code, in a fraction of a whole-model compile. `fullgraph=True` makes a graph break an error
   at warm-up instead of a silent slowdown. `dynamic=True` compiles for symbolic sizes from the
   start: requests come in free sizes and prompt lengths, and with torch's default (specialise,
   then recompile as dynamic at the first other shape) the first request of an unwarmed size or
   prompt length would pay a second compilation.

A marker attribute on the transformer makes `apply_speedups` idempotent: a transformer shared by
several models or pipelines, or made active again, is changed once.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from qwen_image_server.engine import attention
from qwen_image_server.errors import EngineSetupError
from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)

_APPLIED = "_qwen_image_server_speedups"  # set on a transformer once its speed-ups are applied
_QUANTIZED = "_qwen_image_server_fp8"  # its weights are FP8 (cleared when they are loaded again)
FP8_CAPABILITY = (8, 9)  # Ada and Hopper and newer have FP8 matrix units
ROWWISE_CAPABILITY = (9, 0)  # torch's row-wise scaled FP8 matmul is a Hopper kernel; Ada gets per-tensor scales
FP8_INSTALL = "pip install 'qwen-image-server[fp8]' (torchao>=0.17)"
QUANTIZED_PREFIX = "transformer_blocks."


def check_speedups(settings: Settings, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, with a message a person can act on, a speed setting that cannot work here."""
    _check_attention(settings, device, dtype)
    if settings.quantization == "fp8":
        _check_fp8(settings, device)
    if settings.compile:
        _check_compile(device)


def quantize_weights(transformer: Any, settings: Settings, device: torch.device) -> None:
    """FP8 (when asked), before the transformer is placed: each quantized layer moves to `device` as
    it is quantized, so the bf16 transformer is never whole on the GPU (41 GB would not fit beside
    the text encoder on a 48 GB card). Again after `weights_replaced`."""
    if settings.quantization == "fp8" and not getattr(transformer, _QUANTIZED, False):
        quantize_fp8(transformer, settings.fp8_skip, device)
        setattr(transformer, _QUANTIZED, True)


def apply_speedups(transformer: Any, settings: Settings, device: torch.device) -> None:
    """The attention backend and compilation, once per transformer, once it is on its device (see
    the module docstring); FP8 too if `quantize_weights` has not run."""
    quantize_weights(transformer, settings, device)
    if getattr(transformer, _APPLIED, False):
        return
    try:
        attention.set_backend(transformer, settings.attention_backend.lower())
    except (RuntimeError, ValueError) as exc:  # e.g. a hub kernel that could not be downloaded
        raise EngineSetupError(f"attention_backend={settings.attention_backend} could not be set: {exc}") from exc
    if settings.compile:
        compile_blocks(transformer)
    setattr(transformer, _APPLIED, True)


def weights_replaced(transformer: Any) -> None:
    """The transformer's weights were loaded again (a dropped model coming back, engine/residency.py):
    they are bf16 again, so FP8 must be applied again; the attention processors and the compiled
    blocks are the module's own and stay."""
    if hasattr(transformer, _QUANTIZED):
        delattr(transformer, _QUANTIZED)


def compile_blocks(transformer: Any) -> None:
    """Regional compilation: the 60 blocks share one compiled code (see the module docstring)."""
    # The RoPE multiplies complex numbers, which inductor leaves to eager code; it says so once
    # per compilation, which tells an operator nothing to act on.
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)


# -- attention ---------------------------------------------------------------------------------------


def _check_attention(settings: Settings, device: torch.device, dtype: torch.dtype) -> None:
    name = settings.attention_backend.lower()
    here = attention.usable_backends(device, dtype)
    usable = ", ".join(here)
    if name not in attention.known_backends():
        raise EngineSetupError(
            f"attention_backend={settings.attention_backend!r} is not an attention backend diffusers knows "
            f"({', '.join(attention.known_backends())}); usable here: {usable}"
        )
    problem = attention.backend_problem(name, device, dtype)
    if problem is not None:
        raise EngineSetupError(f"attention_backend={name} cannot run here: {problem}. Usable here: {usable}")
    if name in attention.MASKLESS and (settings.cfg_batching or settings.max_batch_size > 1):
        with_masks = [backend for backend in here if backend not in attention.MASKLESS]
        raise EngineSetupError(
            f"attention_backend={name} takes no attention mask, which prompts of different lengths in one "
            "transformer call need (cfg_batching=true, max_batch_size > 1); set cfg_batching=false and "
            f"max_batch_size=1, or use a backend with masks; usable here: {', '.join(with_masks)}"
        )


# -- FP8 -----------------------------------------------------------------------------------------------


def _check_fp8(settings: Settings, device: torch.device) -> None:
    gpus = "compute capability 8.9 or newer: L4, L40S, H100, H200, B200"
    if device.type != "cuda":
        raise EngineSetupError(
            f"quantization=fp8 needs a CUDA GPU with FP8 matrix units ({gpus}); this engine runs on {device.type}. "
            "Set quantization=none"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        raise EngineSetupError(
            f"quantization=fp8 needs a GPU with FP8 matrix units ({gpus}); {torch.cuda.get_device_name(device)} "
            f"is {capability[0]}.{capability[1]}. Set quantization=none"
        )
    if settings.offload != "none":
        raise EngineSetupError(
            f"quantization=fp8 does not combine with offload={settings.offload} (FP8 weights are torchao tensor "
            "subclasses, which the offload hooks do not move); FP8 alone takes the transformer from ~41 to "
            "~20 GB: set offload=none"
        )
    fp8_config(device)  # torchao is importable and has the FP8 configuration


def fp8_config(device: torch.device) -> tuple[Callable[..., None], Any]:
    """torchao's `quantize_` and the FP8 configuration for this GPU; EngineSetupError without torchao."""
    try:
        from torchao import quantization
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
    except ImportError as exc:
        raise EngineSetupError(f"quantization=fp8 needs torchao ({exc}); {FP8_INSTALL}") from None
    per_row = getattr(quantization, "PerRow", None)  # older torchao releases have per-tensor scales only
    if per_row is not None and torch.cuda.get_device_capability(device) >= ROWWISE_CAPABILITY:
        return quantize_, Float8DynamicActivationFloat8WeightConfig(granularity=per_row())
    return quantize_, Float8DynamicActivationFloat8WeightConfig()


def fp8_layer_filter(skip: tuple[str, ...]) -> Callable[[torch.nn.Module, str], bool]:
    """Which modules FP8 quantizes: the linear layers of the repeated blocks, except those whose
    path contains a name of `skip`."""

    def quantized(module: torch.nn.Module, path: str) -> bool:
        return (
            isinstance(module, torch.nn.Linear)
            and path.startswith(QUANTIZED_PREFIX)
            and not any(name in path for name in skip)
        )

    return quantized


def quantize_fp8(transformer: Any, skip: tuple[str, ...], device: torch.device) -> None:
    quantize_, config = fp8_config(device)
    chosen = fp8_layer_filter(skip)
    count = sum(chosen(module, name) for name, module in transformer.named_modules())
    quantize_(transformer, config, filter_fn=chosen, device=device)  # each chosen layer moves, then quantizes
    log.info("fp8: %d linear layers of the blocks quantized; kept in bf16: %s", count, ", ".join(skip) or "none")


# -- compile ---------------------------------------------------------------------------------------------


def _check_compile(device: torch.device) -> None:
    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        raise EngineSetupError(
            f"compile=true: torch.compile does not support Python {sys.version.split()[0]} with torch "
            f"{torch.__version__}; set compile=false or use a Python version torch supports"
        )
    if device.type == "cuda" and not _has_triton():
        raise EngineSetupError(
            "compile=true on a GPU needs Triton, which is not installed (it comes with the CUDA torch wheels: "
            "pip install triton); or set compile=false"
        )
    if device.type == "cpu" and not _has_cpp_compiler():
        raise EngineSetupError(
            "compile=true on the CPU needs a C++ compiler (g++, or the one $CXX names), which was not found; "
            "install one (apt-get install g++) or set compile=false"
        )


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton  # also checks that the GPU is one Triton supports
    except ImportError:  # a torch that moved it: the package's presence is the best we can tell
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    return bool(has_triton())


def _has_cpp_compiler() -> bool:
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # inductor raises its own InvalidCxxCompiler, or others when the search fails
        return False
    return True
