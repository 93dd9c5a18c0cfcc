"""Wire shapes of the native API (`/v1/tasks`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from qwen_image_server.api.wire import (
    HTTP_URL_SPEC_PATTERN,
    IMAGE_REF_SPEC_PATTERN,
    PROMPT_SPEC_PATTERN,
    size_text_pattern,
)
from qwen_image_server.domain import (
    DEFAULT_IMAGE_TO_IMAGE_STRENGTH,
    MAX_CFG,
    MAX_IMAGES_PER_REQUEST,
    MAX_INPUT_IMAGES,
    MAX_PARTIAL_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_LORAS,
    MAX_SEQUENCE_LENGTH_CAP,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    MIN_STEPS,
    SEED_MAX,
    SIZE_PRESETS,
    Acceleration,
    LoraChoice,
    ModelName,
    OutputFormat,
)


class CreateTaskBody(BaseModel):
    """POST /v1/tasks. Parameter names follow diffusers; `size` is WxH or a preset name.

    The bounds are the domain's own (domain.py), so the OpenAPI spec says what validation does; what
    it cannot say (the models this server serves, input images per model, a prompt of only spaces,
    the prompt's length in tokens) is checked when the request is translated."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName = Field(description="qwen-image, qwen-image-edit or qwen-image-edit-plus.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, json_schema_extra={"pattern": PROMPT_SPEC_PATTERN})
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    size: str | None = Field(
        default=None,
        # checked by parse_size and check_side, with better messages
        json_schema_extra={"pattern": size_text_pattern(MIN_SIDE, MAX_SIDE, names=tuple(SIZE_PRESETS))},
        description=f"`1024x1024`, `1024*1024` or a preset ({', '.join(SIZE_PRESETS)}); sides {MIN_SIDE}-{MAX_SIDE}.",
    )
    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    num_inference_steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS)
    true_cfg_scale: float | None = Field(default=None, ge=0.0, le=MAX_CFG)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=MAX_CFG)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    n: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST, description="Number of images.")
    output_format: OutputFormat = OutputFormat.PNG
    output_quality: int = Field(default=90, ge=1, le=100)
    max_sequence_length: int | None = Field(default=None, ge=1, le=MAX_SEQUENCE_LENGTH_CAP)
    partial_images: int = Field(
        default=0,
        ge=0,
        le=MAX_PARTIAL_IMAGES,
        description="Previews per image, decoded from intermediate steps (see `previews`).",
    )
    acceleration: Acceleration = Field(
        default=Acceleration.NONE,
        description="Speed traded for fidelity. `none`: every block of the transformer at every step. `regular`: "
        "First Block Cache at threshold 0.08 (skips the other blocks at steps where the first block's output barely "
        "moved; close to `none`, up to about 2x faster). `high`: the model's Lightning LoRA where the server has one "
        "(its few steps, CFG off: `num_inference_steps` and `true_cfg_scale` are replaced), else the cache at "
        "threshold 0.2 (faster still, more drift from `none`). A server that cannot run a level (`compile` on) "
        "refuses it: 400 `invalid_parameter`, param `acceleration`. See docs/engine.md.",
    )
    loras: list[LoraChoice] = Field(
        default_factory=list,
        max_length=MAX_REQUEST_LORAS,
        description=f'Up to {MAX_REQUEST_LORAS} LoRA adapters for this request: `{{"name": ..., "scale": ...}}` for '
        'one the server offers (setting `request_loras`), or `{"path": URL, "scale": ...}` for a .safetensors '
        "file to download (cached by the server). Scale -4 to 4 (default: the offered adapter's, or 1). Refused with "
        "400 `invalid_parameter` where the server does not offer per-request adapters. See docs/engine.md.",
    )
    images: list[str] = Field(
        default_factory=list,
        max_length=MAX_INPUT_IMAGES,
        json_schema_extra={"items": {"type": "string", "pattern": IMAGE_REF_SPEC_PATTERN}},  # read by sources.py
        description=(
            "Input images: http(s) URLs, data URIs or bare base64. One for qwen-image-edit, 1-3 for "
            "qwen-image-edit-plus; one for qwen-image makes it image-to-image (see `strength`)."
        ),
    )
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description=(
            "Image-to-image (qwen-image with one input image): how far the result may go from the input, "
            f"from near 0 (keep it) to 1 (a new picture from noise). Default {DEFAULT_IMAGE_TO_IMAGE_STRENGTH} "
            "(diffusers' default). About strength x num_inference_steps steps run. Refused on other requests."
        ),
    )
    watermark: bool = Field(
        default=False,
        description='A visible mark in a corner (setting `watermark_text`, e.g. "AI-generated · Qwen-Image"). The '
        "server may force it; the invisible mark and the C2PA manifest are the server's settings, not the request's.",
    )
    prompt_extend: bool = Field(
        default=False,
        description="Rewrite the prompt with the loaded language model first (edit models see their inputs); the "
        "task's `report.actual_prompt` says what the model saw. A server that turned it off says so in "
        "`report.not_applied`.",
    )
    safety_check: bool = Field(
        default=False,
        description="Check each image with the server's safety checker: `report.images[].nsfw`; a flagged image is "
        "reported, blurred or withheld as the server is set. No checker: `report.not_applied` says so.",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        json_schema_extra={"pattern": HTTP_URL_SPEC_PATTERN},  # checked by check_url: url_not_allowed
        description="Receives the final task when it ends, signed with Standard Webhooks headers (docs/callbacks.md).",
    )
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first; equal priorities run in order.")


class ProgressOut(BaseModel):
    step: int
    total: int
    percent: float


class ResultOut(BaseModel):
    url: str
    width: int
    height: int
    seed: int
    content_type: str
    expires_at: str
    index: int
    partial_index: int | None = None


class ErrorOut(BaseModel):
    code: str
    message: str


class RequestOut(BaseModel):
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_inference_steps: int
    true_cfg_scale: float
    seed: int
    n: int
    output_format: str
    input_images: int
    acceleration: str
    strength: float | None = Field(description="Image-to-image and inpainting only; null otherwise.")
    loras: list[LoraChoice] = Field(default_factory=list)
    watermark: bool = False
    prompt_extend: bool = False
    safety_check: bool = False


class ImageNoteOut(BaseModel):
    index: int
    seed: int
    nsfw: bool | None = Field(description="The safety checker's verdict; null where it did not run.")
    withheld: str | None = Field(description="Why the image was kept back (it has no result then); null: delivered.")
    nsfw_score: float | None = Field(default=None, description="The checker's probability that it is NSFW.")


class ReportOut(BaseModel):
    """What the run did beyond the pictures (docs/api.md, report)."""

    actual_prompt: str | None = Field(description="The prompt the model saw, when prompt extension rewrote it.")
    applied: list[str] = Field(description="Options applied: watermark, prompt_extend, safety_check, c2pa, ...")
    not_applied: dict[str, str] = Field(description="Options asked for and not applied, with the reason.")
    images: list[ImageNoteOut]


class TaskOut(BaseModel):
    id: str
    object: str = "task"
    model: str
    status: str
    queue_position: int | None = None
    progress: ProgressOut
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: RequestOut
    results: list[ResultOut]
    previews: list[ResultOut]
    error: ErrorOut | None
    report: ReportOut | None = Field(
        default=None,
        description="Set when the task has succeeded; before that, or for a task that failed or was canceled, "
        "only when options were noted as not applied when the request was accepted (then `not_applied` alone).",
    )


class TaskListOut(BaseModel):
    object: str = "list"
    data: list[TaskOut]
    next_cursor: str | None


class ModelOut(BaseModel):
    """Also the shape of OpenAI's model objects (id, object, created, owned_by), plus our fields."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "qwen-image-server"
    description: str
    ready: bool
    max_input_images: int


class ModelListOut(BaseModel):
    object: str = "list"
    data: list[ModelOut]


class CallbackAttemptOut(BaseModel):
    number: int
    started_at: str
    duration_ms: int
    status_code: int | None = Field(description="The receiver's HTTP status; null when it gave none.")
    outcome: str = Field(description="delivered, failed or refused.")
    error: str | None


class CallbackOut(BaseModel):
    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    object: str = "callback"
    task_id: str
    url: str
    status: str = Field(description="pending (another attempt will come), delivered, failed or refused.")
    next_attempt_at: str | None
    created_at: str
    attempts: list[CallbackAttemptOut]


class CallbackListOut(BaseModel):
    object: str = "list"
    data: list[CallbackOut]
