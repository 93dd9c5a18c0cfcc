"""Wire shapes of the native API (`/v1/tasks`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CreateTaskBody(BaseModel):
    """POST /v1/tasks. Parameter names follow diffusers; `size` is WxH or a preset name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="qwen-image, qwen-image-edit or qwen-image-edit-plus.")
    prompt: str
    negative_prompt: str | None = None
    size: str | None = Field(default=None, description="`1024x1024`, `1024*1024` or a preset such as `16:9`.")
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    true_cfg_scale: float | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    n: int = Field(default=1, description="Number of images (1-10).")
    output_format: str = "png"
    output_quality: int = 90
    max_sequence_length: int | None = None
    partial_images: int = Field(
        default=0, ge=0, le=3, description="Previews per image, decoded from intermediate steps (see `previews`)."
    )
    images: list[str] = Field(
        default_factory=list, max_length=16, description="Input images: http(s) URLs, data URIs or bare base64."
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
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
