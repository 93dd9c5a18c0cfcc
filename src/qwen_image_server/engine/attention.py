"""Which of diffusers' attention backends can run here, and why not.

diffusers (`models/attention_dispatch.py`) names its backends in `AttentionBackendName` and checks
only that a backend's package is installed when it is set (`_check_attention_backend_requirements`);
whether the kernel runs on this device, in this dtype, with an attention mask, it finds out at the
first forward (its per-call constraint checks are off unless DIFFUSERS_ATTN_CHECKS is set). We check
all of it once, when the engine starts, so that a backend that cannot work here stops the start
with a list of those that can, instead of failing every request.

The device facts below are read from diffusers 0.42's registry constraints and the kernels' own
requirements; the CPU ones are tried (tests/engine/test_speedups.py).
"""

from __future__ import annotations

from typing import Any

import torch

# Kernels of CUDA libraries, or SDPA kernels that exist only on CUDA (on the CPU, torch answers
# "No viable backend for scaled_dot_product_attention" for cuDNN and memory-efficient attention).
_CUDA_PREFIXES = ("flash", "_flash", "sage", "_sage", "xformers", "aiter", "_native_cudnn", "_native_efficient")
# The third-party kernels compute in half precision only (their registry constraint, or the kernel's).
_HALF_PRECISION_PREFIXES = ("flash", "_flash", "sage", "_sage", "aiter", "_native_cudnn")
# Oldest GPU generation (compute capability) each kernel is built for: FlashAttention 2 needs Ampere,
# FlashAttention 3 Hopper; the SageAttention variants' minimums are diffusers' registry constraints.
_MIN_CAPABILITY = {
    "flash": (8, 0),
    "flash_varlen": (8, 0),
    "_flash_3": (9, 0),
    "_flash_varlen_3": (9, 0),
    "_sage_qk_int8_pv_fp8_cuda": (9, 0),
    "_sage_qk_int8_pv_fp8_cuda_sm90": (9, 0),
    "_sage_qk_int8_pv_fp16_cuda": (8, 0),
    "_sage_qk_int8_pv_fp16_triton": (8, 0),
}
_OTHER_DEVICES = {"_native_npu": "npu", "_native_xla": "xla"}
# Backends whose diffusers function raises "`attn_mask` is not supported". Qwen-Image passes a mask
# whenever prompts of different lengths share a transformer call (batched CFG, batched requests);
# one prompt alone has none (the pipelines drop an all-ones mask).
MASKLESS = frozenset(
    {
        "flash",
        "flash_hub",
        "_flash_3",
        "_flash_3_hub",
        "flash_4_hub",
        "aiter_fa2_hub",
        "_native_flash",
        "_native_xla",
        "sage",
        "sage_hub",
        "sage_blackwell_hub",
        "_sage_qk_int8_pv_fp8_cuda",
        "_sage_qk_int8_pv_fp8_cuda_sm90",
        "_sage_qk_int8_pv_fp16_cuda",
        "_sage_qk_int8_pv_fp16_triton",
    }
)


def known_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(member.value for member in AttentionBackendName)


def backend_problem(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend `name` (a known one) cannot run on `device` in `dtype`; None when it can."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except RuntimeError as exc:  # its package is missing or too old; diffusers says which to install
        return str(exc)
    if name in _OTHER_DEVICES:
        wanted = _OTHER_DEVICES[name]
        return None if device.type == wanted else f"it runs on {wanted} devices, not {device.type}"
    if not name.startswith(_CUDA_PREFIXES):
        return None
    if device.type != "cuda":
        return f"it needs a CUDA GPU; this engine runs on {device.type}"
    if name.startswith(_HALF_PRECISION_PREFIXES) and dtype != torch.bfloat16:
        return f"it computes in bfloat16 only; the engine's dtype is {str(dtype).removeprefix('torch.')}"
    return _capability_problem(name, device)


def _capability_problem(name: str, device: torch.device) -> str | None:
    needed = _MIN_CAPABILITY.get(name)
    if needed is None:
        return None
    have = torch.cuda.get_device_capability(device)
    if have >= needed:
        return None
    return (
        f"it needs a GPU of compute capability {needed[0]}.{needed[1]} or newer; "
        f"{torch.cuda.get_device_name(device)} is {have[0]}.{have[1]}"
    )


def usable_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The backends that can run here (installed, and made for this device and dtype)."""
    return [name for name in known_backends() if backend_problem(name, device, dtype) is None]


def set_backend(transformer: Any, name: str) -> None:
    """Set `name` on the transformer's attention processors only.

    diffusers' `set_attention_backend` also makes it the process-wide default for every other
    model that dispatches attention without a backend of its own; we put that default back, so the
    setting changes only the transformers it is applied to.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    previous, _function = _AttentionBackendRegistry.get_active_backend()
    try:
        transformer.set_attention_backend(name)
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)
