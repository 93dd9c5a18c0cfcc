"""Wire shapes of fal's queue API for `fal-ai/qwen-image`, `fal-ai/qwen-image/image-to-image`,
`fal-ai/qwen-image-edit` and `fal-ai/qwen-image-edit-plus`: the model inputs (field names, defaults
and presets are fal's), the queue's answers (submit, status, cancel) and the model output, as
`fal-client` parses them.

Inputs refuse fields they do not know (422, FastAPI's `extra_forbidden`), so that an option of
another fal model is never silently dropped; a JSON null means "the default".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qwen_image_server.api.outcome import NotApplied, Withheld
from qwen_image_server.api.wire import LenientRequest
from qwen_image_server.domain import (
    DEFAULT_IMAGE_TO_IMAGE_STRENGTH,
    MAX_LORA_SCALE,
    MAX_REQUEST_LORAS,
    MAX_STEPS,
    MIN_STEPS,
    SEED_MAX,
)

FalAcceleration = Literal["none", "regular", "high"]
FalStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]

MAX_FAL_IMAGES = 4  # fal's range for num_images


class StrictInput(LenientRequest):
    """Nulls are defaults (as in every dialect); unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ImageSize(StrictInput):
    width: int = Field(description="Pixels, 256 to 2048 here (fal allows up to 14142).")
    height: int


class FalLora(StrictInput):
    path: str = Field(min_length=1, max_length=2048, description="A .safetensors URL, or an offered adapter's name.")
    scale: float = Field(default=1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)
    force: bool = Field(
        default=False,
        description="fal's flag; no effect here (every adapter sent is loaded and applied), so `true` is "
        "reported in the answer's `not_applied`.",
    )


class CommonInput(StrictInput):
    """The fields the three models share. Defaults that differ per model are None here and filled
    in translate.py (`MODEL_DEFAULTS`)."""

    prompt: str = Field(min_length=1)
    # A plain string, checked in translate.py: a union with the presets' Literal would name the
    # Literal's branch in the location of a validation error.
    image_size: str | ImageSize | None = Field(
        default=None,
        description="A preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9) or "
        "{width, height}. Default: landscape_4_3 (qwen-image), the input image's aspect "
        "ratio at about 1 MP (qwen-image-edit), square_hd (qwen-image-edit-plus).",
    )
    num_inference_steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS)
    guidance_scale: float | None = Field(
        default=None, ge=0, le=20, description="Qwen-Image's true CFG scale (diffusers' `true_cfg_scale`)."
    )
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    num_images: int = Field(default=1, ge=1, le=MAX_FAL_IMAGES)
    negative_prompt: str | None = None
    acceleration: FalAcceleration | None = Field(
        default=None,
        description="The server's level of the same name: `regular` is First Block Cache at 0.08; `high` the "
        "model's Lightning LoRA where the server has one, else the cache at 0.2 (docs/engine.md).",
    )
    enable_safety_checker: bool = Field(
        default=True,
        description="Check each image with the server's safety checker (`has_nsfw_concepts`); a server without "
        "one says so in the output's `not_applied`.",
    )
    output_format: Literal["jpeg", "png"] = "png"
    sync_mode: bool = Field(
        default=False, description="Images as data URIs in the output instead of URLs (the webhook still gets URLs)."
    )


class TextToImageInput(CommonInput):
    """`POST /fal-ai/qwen-image`."""

    loras: list[FalLora] | None = Field(default=None, max_length=MAX_REQUEST_LORAS)
    use_turbo: bool = Field(default=False, description="The same as `acceleration: high`.")


class ImageToImageInput(TextToImageInput):
    """`POST /fal-ai/qwen-image/image-to-image`: the text-to-image fields and the image to start from."""

    image_url: str = Field(description="The image to start from: an http(s) URL or a data URI.")
    strength: float = Field(
        default=DEFAULT_IMAGE_TO_IMAGE_STRENGTH,
        gt=0,
        le=1,
        description="How far from the input image to go (1: a new picture); about strength x "
        "num_inference_steps steps run.",
    )


class EditInput(CommonInput):
    """`POST /fal-ai/qwen-image-edit`."""

    image_url: str = Field(description="The image to edit: an http(s) URL or a data URI.")


class EditPlusInput(CommonInput):
    """`POST /fal-ai/qwen-image-edit-plus`."""

    image_urls: list[str] = Field(min_length=1, max_length=3, description="1 to 3 images (URLs or data URIs).")


class QueuedOut(BaseModel):
    """The answer to a submit: where to poll, fetch and cancel (on this server)."""

    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int = 0
    not_applied: NotApplied = None


class LogLine(BaseModel):
    message: str
    level: Literal["INFO", "ERROR"] = "INFO"
    source: Literal["USER"] = "USER"
    timestamp: str


class StatusOut(BaseModel):
    """`GET .../requests/{id}/status`: `queue_position` while IN_QUEUE; `logs` (null unless asked for
    with `?logs=1`) from IN_PROGRESS on; `metrics`, and `error`/`error_type` for a failed or canceled
    request, once COMPLETED."""

    status: FalStatus
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[LogLine] | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    error_type: str | None = None
    not_applied: NotApplied = None


class ImageOut(BaseModel):
    url: str = Field(description="A signed URL on this server, or a data URI with `sync_mode`.")
    content_type: str
    file_name: str
    file_size: int
    width: int
    height: int


class OutputOut(BaseModel):
    """The model output: `GET .../requests/{id}`, a sync run's answer, a webhook's `payload`."""

    images: list[ImageOut]
    seed: int
    has_nsfw_concepts: list[bool]
    prompt: str
    timings: dict[str, float]
    not_applied: NotApplied = None
    withheld: Withheld = None


class CancelOut(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


class ErrorOut(BaseModel):
    """fal's error body: `detail` is a string (request errors, with `error_type`) or FastAPI's list
    of `{loc, msg, type}` (input the model refuses, HTTP 422)."""

    detail: str | list[dict[str, Any]]
    error_type: str | None = None
