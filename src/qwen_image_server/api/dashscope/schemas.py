"""Wire shapes of DashScope's image APIs (and Pixazo's, which wraps the synchronous one).

Request models ignore fields they do not know, as DashScope does (its SDK sends whatever keyword
arguments it is given as `parameters`). `model` and `input` are optional here so that the dialect
can answer their absence with DashScope's own codes (`BadRequest.EmptyModel`, `BadRequest.EmptyInput`).
Response models are rendered without their None fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from qwen_image_server.api.outcome import NotApplied, NsfwFlags, Withheld
from qwen_image_server.api.wire import spec_requires

# DashScope's model names -> ours (translate.resolve_model). qwen-image-edit with 2-3 images runs as
# qwen-image-edit-plus. Each name also has dated snapshots, `<name>-YYYY-MM-DD`
# (qwen-image-plus-2026-01-09, ...): the rule takes them all, so that a new snapshot needs no change.
TEXT_TO_IMAGE_NAMES = frozenset({"qwen-image", "qwen-image-plus", "qwen-image-max"})
EDIT_NAMES = frozenset({"qwen-image-edit"})
EDIT_PLUS_NAMES = frozenset({"qwen-image-edit-plus"})
MODEL_NAMES = sorted(TEXT_TO_IMAGE_NAMES | EDIT_NAMES | EDIT_PLUS_NAMES)
# For the spec: a name, or a dated one on a real date (`undated` checks it; 29 February is left out
# of the pattern, not refused).
_MONTH_DAY = r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
MODEL_NAME_PATTERN = rf"^(?:{'|'.join(MODEL_NAMES)})(?:-[1-9][0-9]{{3}}-{_MONTH_DAY})?$"
# `model` and `input` are optional to pydantic so that their absence gets DashScope's own codes, but
# required in the spec: a request without them is refused.
_REQUIRED_IN_SPEC = ConfigDict(extra="ignore", json_schema_extra=spec_requires("model", "input"))
_MODEL_FIELD_SPEC: JsonDict = {"pattern": MODEL_NAME_PATTERN}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Parameters(_Lenient):
    """`parameters` of both endpoints. `num_inference_steps` and `true_cfg_scale` are our extensions."""

    size: str | None = Field(default=None, description='"W*H", e.g. "1328*1328".')
    n: int | None = Field(default=None, description="Number of images, 1-6.")
    seed: int | None = Field(default=None, description="0-2147483647; image i gets seed + i.")
    negative_prompt: str | None = Field(default=None, description="At most 500 characters.")
    prompt_extend: bool | None = Field(
        default=None,
        description="Default true: the prompt is rewritten by the loaded language model first; the task's results "
        "show it as `actual_prompt`.",
    )
    watermark: bool | None = Field(
        default=None,
        description='A visible "AI-generated · Qwen-Image" mark bottom-right (server settings); default false '
        "(true on the Pixazo path, as Pixazo does).",
    )
    num_inference_steps: int | None = Field(default=None, description="Extension: denoising steps (2-250).")
    true_cfg_scale: float | None = Field(default=None, description="Extension: guidance scale (0-20).")


class ContentItem(_Lenient):
    text: str | None = None
    image: str | None = Field(default=None, description="An http(s) URL or a data:image/...;base64, URI.")


class Message(_Lenient):
    role: str = "user"
    content: list[ContentItem] | str


class MultimodalInput(_Lenient):
    messages: list[Message] | None = None


class MultimodalBody(_Lenient):
    """POST /api/v1/services/aigc/multimodal-generation/generation (and Pixazo's endpoint)."""

    model_config = _REQUIRED_IN_SPEC

    model: str | None = Field(
        default=None,
        description="qwen-image, qwen-image-plus, qwen-image-edit, ...",
        json_schema_extra=_MODEL_FIELD_SPEC,
    )
    input: MultimodalInput | None = None
    parameters: Parameters = Field(default_factory=Parameters)


class SynthesisInput(_Lenient):
    prompt: str | None = None
    negative_prompt: str | None = None
    images: list[str] | None = Field(default=None, description="Extension: 1-3 input images for the edit models.")


class SynthesisBody(_Lenient):
    """POST /api/v1/services/aigc/text2image/image-synthesis (with `X-DashScope-Async: enable`)."""

    model_config = _REQUIRED_IN_SPEC

    model: str | None = Field(default=None, json_schema_extra=_MODEL_FIELD_SPEC)
    input: SynthesisInput | None = None
    parameters: Parameters = Field(default_factory=Parameters)


# -- responses -------------------------------------------------------------------------------------


class TaskMetrics(BaseModel):
    TOTAL: int
    SUCCEEDED: int
    FAILED: int


class ImageContent(BaseModel):
    image: str


class AssistantMessage(BaseModel):
    role: str = "assistant"
    content: list[ImageContent]


class Choice(BaseModel):
    finish_reason: str = "stop"
    message: AssistantMessage


class MultimodalOutput(BaseModel):
    choices: list[Choice]
    task_metric: TaskMetrics
    not_applied: NotApplied = None
    withheld: Withheld = None
    nsfw: NsfwFlags = None  # one per image of choices[0].message.content


class MultimodalUsage(BaseModel):
    width: int
    height: int
    image_count: int


class MultimodalResponse(BaseModel):
    output: MultimodalOutput
    usage: MultimodalUsage
    request_id: str


class TaskResult(BaseModel):
    orig_prompt: str
    actual_prompt: str
    url: str | None = None
    code: str | None = None  # a withheld image: DataInspectionFailed
    message: str | None = None


class TaskOutput(BaseModel):
    task_id: str
    task_status: str
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    results: list[TaskResult] | None = None
    task_metrics: TaskMetrics | None = None
    code: str | None = None
    message: str | None = None
    not_applied: NotApplied = None
    nsfw: NsfwFlags = None  # one per entry of `results` (a withheld image's result included); no `withheld`:
    # a withheld image is a result with DataInspectionFailed, DashScope's own way


class ImageCountUsage(BaseModel):
    image_count: int


class TaskResponse(BaseModel):
    """The async call's answer (PENDING), and GET /api/v1/tasks/{task_id}."""

    request_id: str
    output: TaskOutput
    usage: ImageCountUsage | None = None


class TaskListItem(BaseModel):
    """One task of GET /api/v1/tasks; times are milliseconds since the epoch, as DashScope gives them."""

    task_id: str
    status: str
    model_name: str
    api_key_id: str | None = Field(description="The id of the key that made the task; null on an open server.")
    gmt_create: int
    start_time: int | None = None
    end_time: int | None = None


class TaskListResponse(BaseModel):
    """GET /api/v1/tasks (the SDK's `ImageSynthesis.list`)."""

    request_id: str
    data: list[TaskListItem]
    total: int
    total_page: int
    page_no: int
    page_size: int


class ErrorOut(BaseModel):
    """DashScope's error body (api/dashscope/errors.py)."""

    code: str
    message: str
    request_id: str


class PixazoErrorOut(BaseModel):
    """Pixazo's gateway error body: the message alone."""

    error: str


class CancelResponse(BaseModel):
    request_id: str
