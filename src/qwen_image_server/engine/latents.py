"""Latents to pictures, the way the Qwen-Image pipelines decode their final latents."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from qwen_image_server.domain import Size


def decode_latents(pipeline: Any, latents: torch.Tensor, generated: Size) -> Image.Image:
    """Decode one row of packed latents (`[1, tokens, channels]`), made at `generated`, to a picture:
    final latents and the still noisy ones of a preview alike."""
    with torch.inference_mode():
        unpacked = pipeline._unpack_latents(latents, generated.height, generated.width, pipeline.vae_scale_factor)
        unpacked = unpacked.to(pipeline.vae.dtype)
        config = pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(unpacked.device, unpacked.dtype)
        # As the pipelines compute it (dividing by 1/std), so that pictures match theirs bit for bit.
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(unpacked.device, unpacked.dtype)
        decoded = pipeline.vae.decode(unpacked / inverse_std + mean, return_dict=False)[0][:, :, 0]
        picture: Image.Image = pipeline.image_processor.postprocess(decoded, output_type="pil")[0]
        return picture
