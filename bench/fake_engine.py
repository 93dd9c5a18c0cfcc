"""A stand-in engine for measuring the service alone (bench/api_throughput.py); never used to serve.

It makes no pictures: every image of a task is the same small, real PNG (whatever format was asked),
made once. Each denoising step takes `step_seconds` (0 by default: the task ends as soon as the
worker runs it), reports its progress and honours cancel, as the real engine does. It batches as the
real engine does: the entries of a `render_batch` call that share a batch key step together (one
`step_seconds` per step for all of them), each with its own progress, and a canceled entry drops
out while the others go on.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from qwen_image_server.domain import (
    BatchEntry,
    GenerationRequest,
    ImageResult,
    ModelName,
    OutputFormat,
    RenderedImage,
    StepProgress,
)
from qwen_image_server.errors import GenerationCanceled, QwenImageError

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

    def render_batch(self, entries: Sequence[BatchEntry]) -> list[Sequence[RenderedImage] | QwenImageError]:
        outcomes: dict[int, Sequence[RenderedImage] | QwenImageError] = {}
        for group in _groups(entries):
            outcomes.update(self._run_together({index: entries[index] for index in group}))
        return [outcomes[index] for index in range(len(entries))]

    def _run_together(self, entries: dict[int, BatchEntry]) -> dict[int, Sequence[RenderedImage] | QwenImageError]:
        """One simulated pipeline call: every entry advances one step per tick; each reports its
        own progress over all its images, as `Engine.render` does."""
        outcomes: dict[int, Sequence[RenderedImage] | QwenImageError] = {}
        going = dict(entries)
        tick = 0
        while going:
            if self.step_seconds:
                time.sleep(self.step_seconds)
            tick += 1
            for index, entry in list(going.items()):
                request = entry.request
                total = request.num_inference_steps * request.num_images_per_prompt
                if entry.on_step is not None:
                    image_index = (tick - 1) // request.num_inference_steps
                    entry.on_step(StepProgress(step=tick, total=total, image_index=image_index))
                if entry.cancel is not None and entry.cancel.is_set():
                    outcomes[index] = GenerationCanceled("the generation was canceled")
                    del going[index]
                elif tick == total:
                    outcomes[index] = self._images(request)
                    del going[index]
        return outcomes

    def _images(self, request: GenerationRequest) -> list[Encoded]:
        return [
            Encoded(ImageResult(self._png, OutputFormat.PNG, _SIDE, _SIDE, seed=seed, index=index))
            for index, seed in enumerate(request.image_seeds)
        ]


def _groups(entries: Sequence[BatchEntry]) -> list[list[int]]:
    """The indexes of the entries that run as one call: those with the same batch key together, in
    the order of their first entry; an entry without a key alone."""
    groups: dict[object, list[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault(entry.request.batch_key or object(), []).append(index)
    return list(groups.values())
