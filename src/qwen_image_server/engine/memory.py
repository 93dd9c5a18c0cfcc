"""After CUDA runs out of memory: free what can be freed, fail the task with a useful message.

`recover_from_oom` wraps the code that runs the models. On `torch.OutOfMemoryError` (or the
`GenerationFailed` that run.py makes of one) it

1. clears the local variables of every finished frame in the error's tracebacks: they hold the
   failed call's activations (latents, hidden states), which would otherwise stay alive on the GPU
   for as long as the error is kept (a logged error's traceback keeps every frame it names);
2. runs the caller's `free` (the engine evicts idle transformers there) and empties diffusers'
   rotary-embedding caches;
3. collects garbage and returns PyTorch's cached blocks to the driver;
4. raises `GenerationFailed` naming the settings that would have lowered the peak, given the
   current ones.

The engine is then usable again: the next task runs on the same process and GPU.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import traceback
from collections.abc import Callable, Iterator

import torch

from qwen_image_server.engine.residency import clear_rope_caches
from qwen_image_server.errors import GenerationFailed
from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def recover_from_oom(settings: Settings, *, free: Callable[[], object] | None = None) -> Iterator[None]:
    """Run the block; turn an out-of-memory error into `GenerationFailed` after freeing memory."""
    try:
        yield
    except (torch.OutOfMemoryError, GenerationFailed) as exc:
        oom = out_of_memory_cause(exc)
        if oom is None:
            raise
        log.warning("out of GPU memory, freeing cached memory: %s", str(oom).splitlines()[0] if str(oom) else oom)
        _clear_frames(exc)
        if free is not None:
            free()
        release_cached_memory()
        raise GenerationFailed(oom_message(settings)) from exc


def out_of_memory_cause(exc: BaseException) -> torch.OutOfMemoryError | None:
    """The out-of-memory error `exc` is or was caused by, if any."""
    return next((error for error in _chain(exc) if isinstance(error, torch.OutOfMemoryError)), None)


def release_cached_memory() -> None:
    clear_rope_caches()
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def oom_message(settings: Settings) -> str:
    """What to tell about an out-of-memory failure: the settings, not already in use, that lower the
    memory a generation needs."""
    remedies = []
    if settings.offload == "none":
        remedies.append("QWEN_IMAGE_OFFLOAD=model, group or sequential (weights wait in host memory)")
        if len(settings.models) > 1 and settings.resident_models != 1:
            remedies.append("QWEN_IMAGE_RESIDENT_MODELS=1 (one model's transformer on the GPU at a time)")
    elif settings.offload != "sequential":
        remedies.append("QWEN_IMAGE_OFFLOAD=sequential (least GPU memory)")
    if settings.quantization == "none":
        remedies.append("QWEN_IMAGE_QUANTIZATION=fp8 (halves the transformer; GPUs with FP8)")
    if not settings.vae_tiling:
        remedies.append("QWEN_IMAGE_VAE_TILING=true (decodes large pictures in tiles)")
    if settings.max_batch_size > 1:
        remedies.append("QWEN_IMAGE_MAX_BATCH_SIZE=1 (one task per pipeline call)")
    advice = f"server settings that lower the memory needed: {'; '.join(remedies)}; or " if remedies else ""
    return f"out of GPU memory; {advice}ask for a smaller size or fewer images"


def _clear_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames of `exc` and the errors chained to it (frames still
    running, such as the caller's, are skipped by `traceback.clear_frames`)."""
    for error in _chain(exc):
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the errors it was raised from or during, each once."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
