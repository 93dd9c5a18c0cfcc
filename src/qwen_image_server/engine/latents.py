"""Latents to pictures, the way the Qwen-Image pipelines decode their final latents, and an input
picture to the latents image-to-image starts from."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from qwen_image_server.domain import Size

# Pixels one VAE call decodes at most: one 1024x1024 image, four of 512x512. The decoder's peak
# memory grows with the pixels of the call, so a GPU's peak stays that of one 1024x1024 decode
# (as when each image was decoded alone), while small images share a call, which costs less per
# image where the decoder is overhead-bound (small images; the tiny model on a CPU).
DECODE_PIXELS_PER_CALL = 1024 * 1024


def rows_per_decode(generated: Size) -> int:
    return max(1, DECODE_PIXELS_PER_CALL // (generated.width * generated.height))


def decode_rows(pipeline: Any, latents: torch.Tensor, generated: Size) -> list[Image.Image]:
    """Decode rows of packed latents (`[rows, tokens, channels]`), made at `generated`, to pictures,
    as many rows per VAE call as `DECODE_PIXELS_PER_CALL` allows."""
    step = rows_per_decode(generated)
    return [picture for start in range(0, latents.shape[0], step)
            for picture in decode_latents(pipeline, latents[start : start + step], generated)]  # fmt: skip


def decode_latents(pipeline: Any, latents: torch.Tensor, generated: Size) -> list[Image.Image]:
    """Decode packed latents (`[rows, tokens, channels]`), made at `generated`, to pictures in one
    VAE call: final latents and the still noisy ones of a preview alike."""
    with torch.inference_mode():
        unpacked = pipeline._unpack_latents(latents, generated.height, generated.width, pipeline.vae_scale_factor)
        unpacked = unpacked.to(pipeline.vae.dtype)
        config = pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)  # broadcast over the rows
        mean = torch.tensor(config.latents_mean).view(shape).to(unpacked.device, unpacked.dtype)
        # As the pipelines compute it (dividing by 1/std), so that pictures match theirs bit for bit.
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(unpacked.device, unpacked.dtype)
        decoded = pipeline.vae.decode(unpacked / inverse_std + mean, return_dict=False)[0][:, :, 0]
        pictures: list[Image.Image] = pipeline.image_processor.postprocess(decoded, output_type="pil")
        return pictures


def encode_picture(pipeline: Any, picture: Image.Image, generated: Size) -> torch.Tensor:
    """`picture` resized to `generated` and encoded to normalized latents `[1, channels, h, w]`, the
    form the image-to-image pipeline takes in place of a picture (it skips its own encoding then).

    The latents are the mean of the VAE's posterior, as the edit pipelines encode their inputs; the
    stock image-to-image pipeline would draw a sample with the first image's generator, so image i
    of a request would not be the image of a one-image request with seed `seed + i`."""
    with torch.inference_mode():
        pixels = pipeline.image_processor.preprocess(picture, height=generated.height, width=generated.width)
        vae = pipeline.vae
        pixels = pixels.to(device=pipeline._execution_device, dtype=vae.dtype).unsqueeze(2)  # one frame
        latents = vae.encode(pixels).latent_dist.mode()
        config = vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, latents.dtype)
        # As the pipelines compute it (times 1/std), so that the latents match theirs bit for bit.
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(latents.device, latents.dtype)
        normalized: torch.Tensor = ((latents - mean) * inverse_std)[:, :, 0]
        return normalized
