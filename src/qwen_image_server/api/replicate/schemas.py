"""Wire shapes of Replicate's predictions API (`/v1/predictions`, `/v1/models/{owner}/{name}/...`).

The prediction object is the one replicate-python parses (it needs `id`, `model`, `version` and
`status`; extra keys are ignored). Inputs are those of Replicate's qwen/qwen-image,
qwen/qwen-image-edit and qwen/qwen-image-edit-plus pages. Unknown input fields are refused (422),
never dropped: a caller must not believe an option took effect when it did not.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwen_image_server.api.outcome import NotApplied, NsfwFlags, Withheld
from qwen_image_server.api.wire import HTTP_URL_SPEC_PATTERN, PROMPT_SPEC_PATTERN
from qwen_image_server.domain import MAX_LORA_SCALE, MAX_SIDE, MAX_STEPS, MIN_SIDE, MIN_STEPS, SEED_MAX

PredictionStatus = Literal["starting", "processing", "succeeded", "failed", "canceled"]
WebhookEvent = Literal["start", "output", "logs", "completed"]
AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "match_input_image", "custom"]


class PredictionInput(BaseModel):
    """`input` of a prediction. A null means the default; which model takes what is checked in
    translate.py (e.g. `strength` only with an `image` on qwen/qwen-image)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, json_schema_extra={"pattern": PROMPT_SPEC_PATTERN})
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="Random when not set.")
    image: str | list[str] | None = Field(
        default=None,
        description="http(s) URL or data URI. qwen/qwen-image: the image to start from (image-to-image); "
        "qwen/qwen-image-edit: the image to edit (required); qwen/qwen-image-edit-plus: 1-3 images (a list).",
    )
    strength: float | None = Field(
        default=None, gt=0, le=1, description="qwen/qwen-image with `image`: how far to go from it (default 0.9)."
    )
    go_fast: bool | None = Field(
        default=None,
        description="Default true where the server can run it: acceleration level `regular` (First Block Cache). "
        "False: `none`. A server running compiled blocks cannot: there the default is false, and true is refused.",
    )
    guidance: float | None = Field(default=None, ge=0, le=10, description="True CFG scale (default 3; edits 4).")
    image_size: Literal["optimize_for_quality", "optimize_for_speed"] | None = Field(
        default=None,
        description="optimize_for_quality (default): Qwen-Image's trained size for the aspect ratio (about 1.3-1.8 "
        "MP); optimize_for_speed: the same aspect ratio at about 1 MP.",
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None,
        description="Default 16:9 for text-to-image, match_input_image with an input image. `custom` (an extension, "
        "as Replicate's FLUX models have it) takes `width` and `height`.",
    )
    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, description="With aspect_ratio custom only.")
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, description="With aspect_ratio custom only.")
    lora_weights: str | None = Field(
        default=None,
        max_length=2048,
        description="The http(s) URL of a .safetensors LoRA, or the name of an adapter this server offers.",
    )
    lora_scale: float | None = Field(default=None, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)
    output_format: Literal["webp", "jpg", "png"] | None = Field(default=None, description="Default webp.")
    output_quality: int | None = Field(
        default=None, ge=0, le=100, description="jpg and webp quality (default 80; edits 95). Ignored for png."
    )
    enhance_prompt: bool | None = Field(
        default=None, description="Rewrite the prompt with the server's prompt extension first (default false)."
    )
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS, description="Default 50.")
    disable_safety_checker: bool | None = Field(
        default=None, description="Default false: each image is checked by the server's safety checker."
    )


class _Webhooks(BaseModel):
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        json_schema_extra={"pattern": HTTP_URL_SPEC_PATTERN},  # within `_http_url`
    )
    webhook_completed: str | None = Field(
        default=None,
        max_length=2048,
        description="The older name of `webhook`.",
        json_schema_extra={"pattern": HTTP_URL_SPEC_PATTERN},
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None,
        description='Only ["completed"] is delivered (one POST when the prediction ends); other events are refused.',
    )
    stream: bool | None = Field(default=None, description="Not offered: true is refused.")

    @field_validator("webhook", "webhook_completed")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http(s) URL")
        return value


class ModelPredictionBody(_Webhooks):
    """`POST /v1/models/{owner}/{name}/predictions`."""

    model_config = ConfigDict(extra="forbid")

    input: PredictionInput


class PredictionBody(ModelPredictionBody):
    """`POST /v1/predictions`: `version` names the model (see docs/replicate.md)."""

    version: str = Field(
        min_length=1,
        max_length=200,
        description="qwen/qwen-image, qwen/qwen-image:<anything>, or the version id GET /v1/models/qwen/<name> gives.",
    )


class PredictionOut(BaseModel):
    id: str
    model: str
    version: str
    status: PredictionStatus
    input: dict[str, Any]
    output: list[str] | None
    logs: str
    error: str | None
    metrics: dict[str, float]
    created_at: str
    started_at: str | None
    completed_at: str | None
    urls: dict[str, str] | None = None
    data_removed: bool = False
    source: Literal["api"] = "api"
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    not_applied: NotApplied = None
    withheld: Withheld = None
    nsfw: NsfwFlags = None


class PredictionPage(BaseModel):
    previous: str | None = None
    next: str | None = Field(default=None, description="The full URL of the next page.")
    results: list[PredictionOut]


class WebhookSecretOut(BaseModel):
    key: str = Field(description="whsec_...: verifies the signatures of this key's webhooks.")


class VersionOut(BaseModel):
    id: str
    created_at: str
    cog_version: str
    openapi_schema: dict[str, Any]


class ModelInfoOut(BaseModel):
    url: str
    owner: str
    name: str
    description: str
    visibility: Literal["public"] = "public"
    github_url: str | None = None
    paper_url: str | None = None
    license_url: str | None = None
    run_count: int = 0
    cover_image_url: str | None = None
    default_example: None = None
    latest_version: VersionOut


class InvalidField(BaseModel):
    type: str
    field: str
    description: str


class ErrorOut(BaseModel):
    """An RFC 7807 problem, as Replicate answers errors (replicate-python's `ReplicateError`)."""

    title: str
    detail: str
    status: int
    invalid_fields: list[InvalidField] | None = None
