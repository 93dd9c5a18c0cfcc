"""Running the engine's calls: the stock diffusers pipelines for edits, image-to-image and
inpainting, the failures of either path translated once, and the encoding of pictures.

Text-to-image runs our own loop (`denoise.py`); the edit, image-to-image and inpaint pipelines run as
diffusers ships them, all images of a request in one call of batch n (one CPU generator per image, so
image i is the image of a one-image request with seed `seed + i`; the prompt and the input images are
encoded once).

With a `strength` s (image-to-image, inpainting) the pipelines start s of the way into the schedule
and run only `request.denoising_steps` (about s x num_inference_steps) steps: progress counts those,
so it ends at 100%, and previews are spread over them.

The pipelines make sides in multiples of their grid (16 for Qwen-Image) and would silently round
any other size down; a request of another size is generated at the next multiple up and its centre
cropped back to the asked size, results and previews alike (`domain.generation_size`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from qwen_image_server.domain import (
    BatchEntry,
    GenerationRequest,
    ImageResult,
    ModelName,
    PipelineMode,
    Size,
    StepProgress,
    generation_size,
)
from qwen_image_server.engine.latents import decode_rows, encode_picture
from qwen_image_server.errors import GenerationCanceled, GenerationFailed, QwenImageError
from qwen_image_server.images import crop_centre, decode_input_image, decode_mask


@contextlib.contextmanager
def failures_translated() -> Iterator[None]:
    """Any error of a pipeline run as the project's `GenerationFailed` (ours pass through)."""
    try:
        yield
    except QwenImageError:  # ours, and out-of-memory already turned into one (memory.recover_from_oom)
        raise
    except Exception as exc:
        raise GenerationFailed(f"the pipeline failed: {type(exc).__name__}: {exc}") from exc


class FinishPreview(Protocol):
    """Makes a preview picture what the client gets (provenance/finishing.py: watermark, C2PA, encoding)."""

    def __call__(
        self, request: GenerationRequest, picture: Image.Image, index: int, seed: int, *, partial_index: int
    ) -> ImageResult: ...


class StockGeneration:
    """One request through a stock diffusers pipeline: all its images in one call."""

    def __init__(self, pipeline: DiffusionPipeline, entry: BatchEntry, finish: FinishPreview) -> None:
        self.pipeline = pipeline
        self.entry = entry
        self.finish = finish
        self.request = entry.request
        self.generated = generation_size(self.request.width, self.request.height, grid_multiple(pipeline))
        self.arguments = pipeline_arguments(pipeline, self.request, self.generated)
        self.partial_steps = self.request.partial_steps() if entry.on_partial is not None else []

    def pictures(self) -> list[Image.Image]:
        """The request's images, cropped to its size; raises `GenerationCanceled` at the step after a cancel."""
        seeds = self.request.image_seeds
        # CPU generators make the starting noise the same on every device for a given seed.
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        with torch.inference_mode():
            output = self.pipeline(
                **self.arguments,
                num_images_per_prompt=len(seeds),
                generator=generators,
                callback_on_step_end=self._step_end,
                output_type="pil",
            )
        return [crop_centre(picture, self.request.width, self.request.height) for picture in output.images]

    def _step_end(self, _pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        request, entry = self.request, self.entry
        if entry.on_step is not None:
            count = request.num_images_per_prompt
            entry.on_step(StepProgress(step=step + 1, total=request.denoising_steps, image_index=count - 1))
        if entry.cancel is not None and entry.cancel.is_set():
            raise GenerationCanceled("the generation was canceled")
        if entry.on_partial is not None and step + 1 in self.partial_steps:
            partial_index = self.partial_steps.index(step + 1)
            pictures = decode_rows(self.pipeline, tensors["latents"], self.generated)
            for index, (picture, seed) in enumerate(zip(pictures, request.image_seeds, strict=True)):
                preview = crop_centre(picture, request.width, request.height)
                entry.on_partial(self.finish(request, preview, index, seed, partial_index=partial_index))
        return {}


def grid_multiple(pipeline: Any) -> int:
    """The multiple every side the pipeline makes must be: its VAE's down-sampling times the
    transformer's 2x2 latent patches."""
    return int(pipeline.vae_scale_factor) * 2


def pipeline_arguments(pipeline: Any, request: GenerationRequest, generated: Size) -> dict[str, Any]:
    """The stock pipeline call for `request`, made at `generated` (the asked size on the model's grid)."""
    arguments: dict[str, Any] = {
        "prompt": request.prompt,
        "width": generated.width,
        "height": generated.height,
        "num_inference_steps": request.num_inference_steps,
        "true_cfg_scale": request.true_cfg_scale,
        "max_sequence_length": request.max_sequence_length,
    }
    if request.uses_cfg:
        # diffusers runs CFG only when a negative prompt is given; " " is the models' own default.
        arguments["negative_prompt"] = request.negative_prompt or " "
    if pipeline.transformer.config.guidance_embeds:
        arguments["guidance_scale"] = request.guidance_scale if request.guidance_scale is not None else 1.0
    inputs = [decode_input_image(data, index=i) for i, data in enumerate(request.images)]
    mode = request.pipeline_mode
    if mode is PipelineMode.INPAINT:
        # The masked area is generated from the prompt (anew at strength 1), the rest is kept.
        assert request.mask is not None
        # The input once per image: the pipeline encodes each with that image's own generator, so
        # image i is the image of seed + i alone (with one input, every image's noise but the first
        # would be drawn after another generator's encoding).
        inputs = [inputs[0]] * request.num_images_per_prompt
        arguments.update(image=inputs, mask_image=decode_mask(request.mask), strength=request.strength)
    elif mode is PipelineMode.IMAGE_TO_IMAGE:
        # The input resized to the generated size (stretched to another aspect ratio), as latents.
        arguments.update(image=encode_picture(pipeline, inputs[0], generated), strength=request.strength)
    elif request.model is ModelName.QWEN_IMAGE_EDIT:
        arguments["image"] = inputs[0]
    elif request.model is ModelName.QWEN_IMAGE_EDIT_PLUS:
        arguments["image"] = inputs
    return arguments
