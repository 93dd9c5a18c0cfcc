"""Text-to-image as our own denoising loop: several requests, and all their images, in one batch.

Diffusers' `QwenImagePipeline` runs one prompt per call and true CFG as two transformer calls per
step. This loop uses the same components and the same arithmetic (prompt encoding, starting noise,
timesteps, the CFG combination with its norm rescale, the scheduler step, VAE decoding), but on
*rows*: one row per output image, of one or several requests that share a `batch_key` (same latent
grid, same timesteps). So:

- the images of a request run together, each row from its own CPU generator, so image *i* is the
  image a one-image request with seed `seed + i` makes (to float rounding: batched matrix products
  round differently, see tests/engine/test_batching.py);
- each request's prompt is encoded once, whatever its image count;
- with `cfg_batching`, the conditional and unconditional passes run as one transformer call of
  twice the rows: prompts of different lengths are zero-padded to the longest and masked, which the
  transformer supports (`encoder_hidden_states_mask`);
- each request keeps its own CFG scale, progress callback, previews and cancel flag: a canceled
  request's rows leave the batch at the next step and the others go on;
- every transformer call runs in a cache context (`acceleration.CacheContexts`: one for a CFG call
  of both halves, "cond"/"uncond" for two passes, renamed when the rows change), so the cache hooks
  of an acceleration level keep apart what must not mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps
from PIL import Image

from qwen_image_server.domain import BatchEntry, Size, StepProgress, generation_size
from qwen_image_server.engine.acceleration import CacheContexts
from qwen_image_server.engine.latents import decode_rows
from qwen_image_server.engine.run import FinishPreview
from qwen_image_server.errors import GenerationCanceled, QwenImageError
from qwen_image_server.images import crop_centre


@dataclass
class _Prompt:
    """A request's encoded prompt (or negative prompt): `[1, tokens, dim]` and its token count."""

    embeds: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


@dataclass
class _Request:
    """One request's part of the batch."""

    entry: BatchEntry
    positive: _Prompt
    negative: _Prompt | None
    partial_steps: list[int]
    outcome: QwenImageError | None = None  # set when it leaves the batch early (canceled)

    @property
    def rows(self) -> int:
        return self.entry.request.num_images_per_prompt

    @property
    def canceled(self) -> bool:
        cancel = self.entry.cancel
        return cancel is not None and cancel.is_set()


class TextToImageBatch:
    """One run of the loop over the requests of `entries` (all with the same `batch_key`)."""

    def __init__(
        self, pipeline: Any, entries: Sequence[BatchEntry], *, cfg_batching: bool, finish: FinishPreview
    ) -> None:
        self.pipeline = pipeline
        self.finish = finish
        self.device = pipeline._execution_device
        self.cfg_batching = cfg_batching
        first = entries[0].request
        self.steps = first.num_inference_steps
        self.uses_cfg = first.uses_cfg
        self.multiple = int(pipeline.vae_scale_factor) * 2  # pixels per latent patch, each way
        self.generated: Size = generation_size(first.width, first.height, self.multiple)
        self.contexts = CacheContexts(pipeline.transformer)
        with torch.inference_mode():
            self.requests = [self._encode(entry) for entry in entries]

    @torch.inference_mode()
    def run(self) -> list[list[Image.Image] | QwenImageError]:
        """Each request's pictures (cropped to its size), or its error; errors that stop the whole
        batch (a pipeline failure) raise."""
        active = [request for request in self.requests if not self._leaves(request)]
        if not active:  # all canceled before the start: run nothing
            return self._finish(active, torch.empty(0))
        latents = self._starting_noise(active)
        timesteps = self._timesteps(latents)
        guidance = self._guidance(latents.shape[0])
        conditions = self._conditions(active)
        for index, t in enumerate(timesteps):
            if not active:
                break
            noise = self._predict(conditions, latents, t, guidance)
            latents = self.pipeline.scheduler.step(noise, t, latents, return_dict=False)[0]
            latents, still, guidance = self._after_step(active, latents, guidance, index + 1)
            if len(still) != len(active):  # rows left the batch: stack the prompts of the rest once
                active = still
                conditions = self._conditions(active) if active else conditions
        return self._finish(active, latents)

    # -- preparation -----------------------------------------------------------------------------

    def _encode(self, entry: BatchEntry) -> _Request:
        request = entry.request
        if entry.cancel is not None and entry.cancel.is_set():  # canceled before the start: encode nothing
            return _Request(entry, _Prompt(torch.empty(0)), None, [], GenerationCanceled("the generation was canceled"))
        positive = self._prompt(request.prompt, request.max_sequence_length)
        negative = None
        if request.uses_cfg:
            # " " is the models' own default negative prompt (diffusers skips CFG without one).
            negative = self._prompt(request.negative_prompt or " ", request.max_sequence_length)
        partial_steps = request.partial_steps() if entry.on_partial is not None else []
        return _Request(entry, positive, negative, partial_steps)

    def _prompt(self, text: str, max_sequence_length: int) -> _Prompt:
        embeds, _mask = self.pipeline.encode_prompt(
            prompt=text, device=self.device, num_images_per_prompt=1, max_sequence_length=max_sequence_length
        )
        return _Prompt(embeds)  # one prompt: no padding, so every token is real

    def _starting_noise(self, requests: list[_Request]) -> torch.Tensor:
        """One row per image, each from a CPU generator seeded with that image's seed (the same noise
        on every device, and the same as a one-image request with that seed)."""
        channels = self.pipeline.transformer.config.in_channels // 4
        dtype = requests[0].positive.embeds.dtype  # the text encoder's (a canceled request encoded nothing)
        rows = []
        for request in requests:
            for seed in request.entry.request.image_seeds:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                size = self.generated
                rows.append(
                    self.pipeline.prepare_latents(1, channels, size.height, size.width, dtype, self.device, generator)
                )
        return torch.cat(rows)

    def _timesteps(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's own schedule: sigmas from 1 to 1/steps, shifted for the image's size."""
        config = self.pipeline.scheduler.config
        sigmas = np.linspace(1.0, 1 / self.steps, self.steps)
        mu = calculate_shift(
            latents.shape[1],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        timesteps: torch.Tensor
        timesteps, _ = retrieve_timesteps(self.pipeline.scheduler, self.steps, self.device, sigmas=sigmas, mu=mu)
        self.pipeline.scheduler.set_begin_index(0)
        return timesteps

    def _guidance(self, rows: int) -> torch.Tensor | None:
        """Guidance-distilled transformers take a guidance value per row; the released ones none."""
        if not self.pipeline.transformer.config.guidance_embeds:
            return None
        scale = self.requests[0].entry.request.guidance_scale  # part of the batch key
        return torch.full([rows], 1.0 if scale is None else scale, device=self.device, dtype=torch.float32)

    # -- one step --------------------------------------------------------------------------------

    def _conditions(self, active: list[_Request]) -> _Conditions:
        """The prompts of the rows, stacked as the transformer takes them, and their CFG scales."""
        positive = [request.positive for request in active for _ in range(request.rows)]
        if not self.uses_cfg:
            return _Conditions(_padded(positive))
        negative = [request.negative for request in active for _ in range(request.rows) if request.negative]
        scales = [request.entry.request.true_cfg_scale for request in active for _ in range(request.rows)]
        # One scale for all: a Python number, as the stock pipeline multiplies (exact in bf16 too).
        scale = scales[0] if len(set(scales)) == 1 else torch.tensor(scales, device=self.device).view(-1, 1, 1)
        if self.cfg_batching:
            return _Conditions(_padded(positive + negative), scale=scale)
        return _Conditions(_padded(positive), _padded(negative), scale)

    def _predict(
        self, conditions: _Conditions, latents: torch.Tensor, t: torch.Tensor, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        """The noise prediction of every row, CFG applied per request with its own scale."""
        if conditions.scale is None:
            with self.contexts("cond"):
                return self._forward(latents, conditions.prompts, t, guidance)
        if conditions.negative is None:  # CFG as one call of both halves
            doubled = None if guidance is None else torch.cat([guidance, guidance])
            with self.contexts("cfg"):
                both = self._forward(torch.cat([latents, latents]), conditions.prompts, t, doubled)
            cond, uncond = both.chunk(2)
        else:
            with self.contexts("cond"):
                cond = self._forward(latents, conditions.prompts, t, guidance)
            with self.contexts("uncond"):
                uncond = self._forward(latents, conditions.negative, t, guidance)
        combined = (uncond + conditions.scale * (cond - uncond)).to(cond.dtype)
        # Qwen-Image's rescale: each token keeps the norm of its conditional prediction.
        cond_norm = torch.norm(cond, dim=-1, keepdim=True)
        guided: torch.Tensor = combined * (cond_norm / torch.norm(combined, dim=-1, keepdim=True))
        return guided

    def _forward(
        self, latents: torch.Tensor, prompts: _Stacked, t: torch.Tensor, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        embeds, mask = prompts
        rows = latents.shape[0]
        grid = (1, self.generated.height // self.multiple, self.generated.width // self.multiple)  # patches
        prediction: torch.Tensor = self.pipeline.transformer(
            hidden_states=latents,
            timestep=t.expand(rows).to(latents.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=embeds,
            encoder_hidden_states_mask=mask,
            img_shapes=[[grid]] * rows,
            return_dict=False,
        )[0]
        return prediction

    def _after_step(
        self, active: list[_Request], latents: torch.Tensor, guidance: torch.Tensor | None, step: int
    ) -> tuple[torch.Tensor, list[_Request], torch.Tensor | None]:
        """Report progress and previews, then drop the rows of requests canceled meanwhile."""
        start = 0
        keep: list[int] = []
        still: list[_Request] = []
        for request in active:
            rows = range(start, start + request.rows)
            start += request.rows
            self._report(request, latents[rows.start : rows.stop], step)
            if not self._leaves(request):
                keep.extend(rows)
                still.append(request)
        if len(keep) == latents.shape[0]:
            return latents, still, guidance
        self.contexts.rows_changed()  # what the cache hooks hold is of the old rows
        index = torch.tensor(keep, device=latents.device, dtype=torch.long)
        return latents[index], still, None if guidance is None else guidance[index]

    def _report(self, request: _Request, latents: torch.Tensor, step: int) -> None:
        entry = request.entry
        if entry.on_step is not None:
            entry.on_step(StepProgress(step=step, total=self.steps, image_index=request.rows - 1))
        if entry.on_partial is None or step not in request.partial_steps or request.canceled:
            return
        partial_index = request.partial_steps.index(step)
        pictures = self._pictures(request, decode_rows(self.pipeline, latents, self.generated))
        for image_index, (preview, seed) in enumerate(zip(pictures, entry.request.image_seeds, strict=True)):
            entry.on_partial(self.finish(entry.request, preview, image_index, seed, partial_index=partial_index))

    def _leaves(self, request: _Request) -> bool:
        if request.outcome is None and request.canceled:
            request.outcome = GenerationCanceled("the generation was canceled")
        return request.outcome is not None

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self, active: list[_Request], latents: torch.Tensor) -> list[list[Image.Image] | QwenImageError]:
        """Decode the rows that ran to the end (several per VAE call where the size allows,
        `latents.DECODE_PIXELS_PER_CALL`), each cropped to its request's size."""
        decoded = decode_rows(self.pipeline, latents, self.generated) if active else []
        pictures: dict[int, list[Image.Image]] = {}
        start = 0
        for request in active:
            pictures[id(request)] = self._pictures(request, decoded[start : start + request.rows])
            start += request.rows
        outcomes: list[list[Image.Image] | QwenImageError] = []
        for request in self.requests:
            outcome = request.outcome or GenerationCanceled("the generation was canceled")
            outcomes.append(pictures.get(id(request), outcome))
        return outcomes

    @staticmethod
    def _pictures(request: _Request, pictures: list[Image.Image]) -> list[Image.Image]:
        asked = request.entry.request
        return [crop_centre(picture, asked.width, asked.height) for picture in pictures]


_Stacked = tuple[torch.Tensor, torch.Tensor | None]  # prompt embeddings of the rows, and their mask


@dataclass(frozen=True)
class _Conditions:
    """What each step of the current rows takes, made once per set of rows, not per step: the
    prompts stacked (with CFG as one call: the positive rows, then the negative ones), the negative
    prompts for CFG as two calls, and the CFG scale (None: no CFG)."""

    prompts: _Stacked
    negative: _Stacked | None = None
    scale: float | torch.Tensor | None = None


def _padded(prompts: list[_Prompt]) -> _Stacked:
    """Stack prompts of different lengths: zero-padded to the longest, with the mask that tells the
    transformer which tokens are real (None when none is padded, as diffusers passes it)."""
    longest = max(prompt.length for prompt in prompts)
    if all(prompt.length == longest for prompt in prompts):
        return torch.cat([prompt.embeds for prompt in prompts]), None
    first = prompts[0].embeds
    embeds = first.new_zeros(len(prompts), longest, first.shape[2])
    mask = torch.zeros(len(prompts), longest, dtype=torch.long, device=first.device)
    for row, prompt in enumerate(prompts):
        embeds[row, : prompt.length] = prompt.embeds[0]
        mask[row, : prompt.length] = 1
    return embeds, mask
