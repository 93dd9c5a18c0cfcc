"""Warm-up: one short generation per served model and named size, before the worker reports ready.

The first call of a compiled transformer at a new shape compiles it, and the first of an attention
or matmul kernel at a new shape may autotune; warm-up pays both before a user waits. Each run goes
through `Engine.render`, the path user requests take, with what requests get by default (true CFG
on, one image), so the same kernels are the ones warmed: 2 steps (a second step shows that the
compiled code is reused), and for the edit models a plain grey input picture of the size. A run
that fails stops the start (`EngineSetupError` naming the model and size): a deployment whose named
sizes do not run should not report ready.

With `compile=true` each model and size is warmed in every batch shape the compiled blocks meet:
torch.compile specialises a dimension of size 1 even with `dynamic=True`, so a transformer call of
batch 1 and one of batch 2 or more compile separately. Besides the default request (CFG on: batch 2
with `cfg_batching`, two calls of batch 1 without) it runs one without CFG (batch 1, no mask) and
one of two images with CFG (batch 4, or 2 per pass), which also stands for a `max_batch_size` batch.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from qwen_image_server.domain import MODEL_SPECS, GenerationRequest, parse_size
from qwen_image_server.errors import EngineSetupError, QwenImageError
from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)

WARMUP_STEPS = 2
WARMUP_PROMPT = "a grey stone on a wooden table by a window, soft morning light"
_GREY = (128, 128, 128)


# The batch shapes warmed when compiling, beyond the default request: (true_cfg_scale, images).
COMPILED_SHAPES = ((1.0, 1), (None, 2))


def warmup_requests(settings: Settings) -> list[GenerationRequest]:
    """One request per served model and size of `settings.warmup_sizes`, in that order; with
    `compile`, also each of `COMPILED_SHAPES` after it (see the module docstring)."""
    requests = []
    shapes = ((None, 1), *COMPILED_SHAPES) if settings.compile else ((None, 1),)
    for model in settings.models:
        for text in settings.warmup_sizes:
            size = parse_size(text)
            picture = (_grey_png(size.width, size.height),) if MODEL_SPECS[model].is_edit else ()
            for cfg, images in shapes:
                requests.append(
                    GenerationRequest.create(
                        model=model,
                        prompt=WARMUP_PROMPT,
                        width=size.width,
                        height=size.height,
                        num_inference_steps=WARMUP_STEPS,
                        seed=0,
                        images=picture,
                        num_images_per_prompt=images,
                        **({} if cfg is None else {"true_cfg_scale": cfg}),
                    )
                )
    return requests


def warm_up(render: Callable[[GenerationRequest], Any], settings: Settings) -> None:
    """Run each warm-up request through `render` (the engine's), logging the seconds each took."""
    for request in warmup_requests(settings):
        started = time.perf_counter()
        try:
            render(request)
        except QwenImageError as exc:
            raise EngineSetupError(
                f"warm-up of {request.model} at {request.width}x{request.height} failed: {exc.message}"
            ) from exc
        seconds = time.perf_counter() - started
        log.info("warmed up %s at %dx%d in %.1f s", request.model, request.width, request.height, seconds)


def _grey_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), _GREY).save(buffer, format="PNG")
    return buffer.getvalue()
