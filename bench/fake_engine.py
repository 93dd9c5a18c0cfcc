"""A stand-in engine for measuring the service alone (bench/api_throughput.py); never used to serve.

It makes no pictures: every image of a task is the same small, real PNG (whatever format was asked),
made once. Each denoising
step takes `step_seconds` (0 by default: the task ends as soon as the worker runs it), reports its
progress and honours cancel, as the real engine does.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from qwen_image_server.domain import GenerationRequest, ImageResult, ModelName, OutputFormat, StepProgress
from qwen_image_server.errors import GenerationCanceled

_SIDE = 64


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (_SIDE, _SIDE), (120, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Encoded:
    """An image that needs no encoding (the worker's `RenderedImage`)."""

    result: ImageResult

    def encode(self) -> ImageResult:
        return self.result


class InstantEngine:
    """Implements the worker's `GenerationEngine` protocol without a model."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        self._png = _png()

    def load(self, model: ModelName) -> object:
        return None

    def warm_up(self) -> None:
        """Nothing to warm."""

    def is_loaded(self, model: ModelName) -> bool:
        return True

    def validate(self, request: GenerationRequest) -> None:
        """Nothing to check without a tokenizer."""

    def render(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable[[StepProgress], None] | None = None,
        on_partial: Callable[[ImageResult], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Encoded]:
        steps = request.num_inference_steps
        total = steps * request.num_images_per_prompt
        results = []
        for index, seed in enumerate(request.image_seeds):
            for step in range(steps):
                if self.step_seconds:
                    time.sleep(self.step_seconds)
                if on_step is not None:
                    on_step(StepProgress(step=index * steps + step + 1, total=total, image_index=index))
                if cancel is not None and cancel.is_set():
                    raise GenerationCanceled("the generation was canceled")
            results.append(Encoded(ImageResult(self._png, OutputFormat.PNG, _SIDE, _SIDE, seed=seed, index=index)))
        return results
