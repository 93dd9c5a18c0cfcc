"""One generation: the diffusers call per image, its step callback, previews and encoding.

The pipelines make sides in multiples of their grid (16 for Qwen-Image) and would silently round
any other size down; a request of another size is generated at the next multiple up and its centre
cropped back to the asked size, results and previews alike (`domain.generation_size`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ImageResult, ModelName, Size, StepProgress, generation_size
from qwen_image_server.errors import GenerationCanceled, GenerationFailed, QwenImageError
from qwen_image_server.images import crop_centre, decode_input_image, decode_mask, encode_image


class Generation:
    """The state of one request's run: inputs decoded once, callbacks, the cancel flag."""

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        request: GenerationRequest,
        *,
        on_step: Callable[[StepProgress], None] | None,
        on_partial: Callable[[ImageResult], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.pipeline = pipeline
        self.request = request
        self.on_step = on_step
        self.on_partial = on_partial
        self.cancel = cancel
        self.generated = generation_size(request.width, request.height, grid_multiple(pipeline))
        self.arguments = pipeline_arguments(pipeline, request, self.generated)
        self.partial_steps = request.partial_steps() if on_partial is not None else []

    def raise_if_canceled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCanceled("the generation was canceled")

    def image(self, index: int, seed: int) -> Image.Image:
        """Image `index` of the request, from its own seed."""
        # A CPU generator makes the starting noise the same on every device for a given seed.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        step_end = self._step_callback(index, seed)
        try:
            with torch.inference_mode():
                output = self.pipeline(
                    **self.arguments, generator=generator, callback_on_step_end=step_end, output_type="pil"
                )
        except QwenImageError:
            raise
        except torch.OutOfMemoryError as exc:
            raise GenerationFailed(
                "out of GPU memory; try a smaller size, fewer images, or an offload setting (QWEN_IMAGE_OFFLOAD)"
            ) from exc
        except Exception as exc:
            raise GenerationFailed(f"the pipeline failed: {type(exc).__name__}: {exc}") from exc
        picture: Image.Image = output.images[0]
        return crop_centre(picture, self.request.width, self.request.height)

    def _step_callback(self, index: int, seed: int) -> Callable[..., dict[str, Any]]:
        steps = self.request.num_inference_steps
        total = steps * self.request.num_images_per_prompt

        def step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if self.on_step is not None:
                self.on_step(StepProgress(step=index * steps + step + 1, total=total, image_index=index))
            self.raise_if_canceled()
            if self.on_partial is not None and step + 1 in self.partial_steps:
                partial_index = self.partial_steps.index(step + 1)
                preview = decode_preview(self.pipeline, tensors["latents"], self.generated)
                preview = crop_centre(preview, self.request.width, self.request.height)
                self.on_partial(encode_result(self.request, preview, index, seed, partial_index=partial_index))
            return {}

        return step_end


def grid_multiple(pipeline: Any) -> int:
    """The multiple every side the pipeline makes must be: its VAE's down-sampling times the
    transformer's 2x2 latent patches."""
    return int(pipeline.vae_scale_factor) * 2


def pipeline_arguments(pipeline: Any, request: GenerationRequest, generated: Size) -> dict[str, Any]:
    """The pipeline call for `request`, made at `generated` (the asked size on the model's grid)."""
    arguments: dict[str, Any] = {
        "prompt": request.prompt,
        "width": generated.width,
        "height": generated.height,
        "num_inference_steps": request.num_inference_steps,
        "true_cfg_scale": request.true_cfg_scale,
        "num_images_per_prompt": 1,
        "max_sequence_length": request.max_sequence_length,
    }
    if request.uses_cfg:
        # diffusers runs CFG only when a negative prompt is given; " " is the models' own default.
        arguments["negative_prompt"] = request.negative_prompt or " "
    if pipeline.transformer.config.guidance_embeds:
        arguments["guidance_scale"] = request.guidance_scale if request.guidance_scale is not None else 1.0
    inputs = [decode_input_image(data, index=i) for i, data in enumerate(request.images)]
    if request.mask is not None:
        # Full strength: the masked area is generated anew from the prompt, the rest is kept.
        arguments.update(image=inputs[0], mask_image=decode_mask(request.mask), strength=1.0)
    elif request.model is ModelName.QWEN_IMAGE_EDIT:
        arguments["image"] = inputs[0]
    elif request.model is ModelName.QWEN_IMAGE_EDIT_PLUS:
        arguments["image"] = inputs
    return arguments


def decode_preview(pipeline: Any, latents: torch.Tensor, generated: Size) -> Image.Image:
    """Decode the current (still noisy) latents, made at `generated`, the way the pipeline decodes
    its final ones."""
    with torch.inference_mode():
        unpacked = pipeline._unpack_latents(latents, generated.height, generated.width, pipeline.vae_scale_factor)
        unpacked = unpacked.to(pipeline.vae.dtype)
        config = pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(unpacked.device, unpacked.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(unpacked.device, unpacked.dtype)
        decoded = pipeline.vae.decode(unpacked * std + mean, return_dict=False)[0][:, :, 0]
        picture: Image.Image = pipeline.image_processor.postprocess(decoded, output_type="pil")[0]
        return picture


def encode_result(
    request: GenerationRequest, picture: Image.Image, index: int, seed: int, *, partial_index: int | None = None
) -> ImageResult:
    data = encode_image(picture.convert("RGB"), request.output_format.value, request.output_quality)
    return ImageResult(
        data=data,
        output_format=request.output_format,
        width=picture.width,
        height=picture.height,
        seed=seed,
        index=index,
        partial_index=partial_index,
    )
