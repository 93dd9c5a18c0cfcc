"""Wire shapes of Novita's Qwen-Image API (`/v3/async/...`), with the provider's field names and types.

Unknown request fields are ignored, as Novita's own (protobuf-JSON) decoder discards them; a client
written for Novita may send fields that only other Novita models use.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from qwen_image_server.api.outcome import NotApplied, Withheld
from qwen_image_server.api.wire import HTTP_URL_SPEC_PATTERN, PROMPT_SPEC_PATTERN, LenientRequest, size_text_pattern
from qwen_image_server.domain import SEED_MAX

NovitaStatus = Literal["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"]

DEFAULT_SIZE = "1024*1024"
NOVITA_MIN_SIDE = 256
NOVITA_MAX_SIDE = 1536


class Webhook(LenientRequest):
    url: str = Field(
        max_length=2048,
        description="Receives the task result when the task ends.",
        json_schema_extra={"pattern": HTTP_URL_SPEC_PATTERN},  # within what `_http_url` checks
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value


class ExtraIn(LenientRequest):
    """`extra` of a request: `webhook` and `enable_nsfw_detection`; other keys are ignored."""

    webhook: Webhook | None = None
    enable_nsfw_detection: bool = Field(
        default=False,
        description="Check each image with the server's safety checker; the result reports `has_nsfw_contents` and "
        "each image's `nsfw_detection_result`.",
    )


class Txt2ImgBody(LenientRequest):
    """`POST /v3/async/qwen-image-txt2img`."""

    prompt: str = Field(
        description="Text prompt for image generation.",
        json_schema_extra={"minLength": 1, "pattern": PROMPT_SPEC_PATTERN},
    )
    size: str = Field(
        default=DEFAULT_SIZE,
        description=f"`width*height`, {NOVITA_MIN_SIDE} to {NOVITA_MAX_SIDE} per side.",
        json_schema_extra={"pattern": size_text_pattern(NOVITA_MIN_SIDE, NOVITA_MAX_SIDE)},  # what novita_size reads
    )
    extra: ExtraIn | None = None


class EditBody(LenientRequest):
    """`POST /v3/async/qwen-image-edit`."""

    prompt: str = Field(
        description="The edit instruction.", json_schema_extra={"minLength": 1, "pattern": PROMPT_SPEC_PATTERN}
    )
    image: str = Field(description="The image to edit: an http(s) URL, a data URI or bare base64.")
    seed: int = Field(default=-1, ge=-1, le=SEED_MAX, description="-1 picks a random seed.")
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    extra: ExtraIn | None = None


class TaskIdOut(BaseModel):
    task_id: str


class DebugInfoOut(BaseModel):
    """Times in milliseconds since the epoch, as strings (the provider's type); "0" until known."""

    request_info: str = ""
    submit_time_ms: str
    execute_time_ms: str
    complete_time_ms: str


class ExtraOut(BaseModel):
    seed: str
    enable_nsfw_detection: bool = False
    has_nsfw_contents: list[bool] = Field(
        default_factory=list,
        description="Per image of `images`, in its order, whether the checker flagged it; empty when no check ran.",
    )
    not_applied: NotApplied = None
    withheld: Withheld = None
    debug_info: DebugInfoOut


class TaskOut(BaseModel):
    task_id: str
    task_type: str
    status: NovitaStatus
    reason: str
    eta: int = Field(description="Estimated seconds until the task ends; 0 when unknown or ended.")
    progress_percent: int


class NsfwResultOut(BaseModel):
    valid: bool = Field(description="True when the image passed the check (not flagged).")
    confidence: float = Field(description="The checker's probability that the image is NSFW, 0-1.")


class ImageOut(BaseModel):
    image_url: str
    image_url_ttl: str = Field(description="Seconds the URL stays valid, as a string (the provider's type).")
    image_type: str
    nsfw_detection_result: NsfwResultOut | None = None


class TaskResultOut(BaseModel):
    """`GET /v3/async/task-result`, and the `payload` of a webhook."""

    extra: ExtraOut
    task: TaskOut
    images: list[ImageOut]
    videos: list[dict[str, Any]] = Field(default_factory=list)
    audios: list[dict[str, Any]] = Field(default_factory=list)


class ErrorOut(BaseModel):
    """Novita's error body; `code` repeats the HTTP status."""

    code: int
    reason: str
    message: str
    metadata: dict[str, str]
