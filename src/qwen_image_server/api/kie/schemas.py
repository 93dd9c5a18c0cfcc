"""Wire shapes of the kie.ai / Apikley jobs API (`/api/v1/jobs/...`), as its documents name them.

Field names are the provider's (camelCase at the top level, snake_case inside `input`), so a client
written for the provider parses our answers unchanged.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwen_image_server.api.wire import HTTP_URL_SPEC_PATTERN, PROMPT_SPEC_PATTERN
from qwen_image_server.domain import MAX_LORA_SCALE, MAX_REQUEST_LORAS

KieModelName = Literal["qwen/text-to-image", "qwen/image-to-image", "qwen/image-edit"]
ImageSizePreset = Literal["square", "square_hd", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
KieState = Literal["waiting", "queuing", "generating", "success", "fail"]

MAX_PROMPT_CHARS = 5000
MAX_EDIT_PROMPT_CHARS = 2000  # the provider's qwen/image-edit page allows less than text-to-image
MAX_NEGATIVE_PROMPT_CHARS = 500


class KieLora(BaseModel):
    """One adapter in fal's shape."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=2048, description="A .safetensors URL, or an offered adapter's name.")
    scale: float = Field(default=1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)


class KieInput(BaseModel):
    """`input` of `POST /api/v1/jobs/createTask`. Defaults are the provider's."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, json_schema_extra={"pattern": PROMPT_SPEC_PATTERN})
    image_url: str | None = Field(
        default=None,
        description="qwen/image-edit: the image to edit; qwen/image-to-image: the image to start from (http(s) URL or "
        "data URI).",
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="qwen/image-to-image only: how far from the input image to go, above 0 to 1 (default 0.6, "
        "diffusers' default; fal's image-to-image field of the same name).",
    )
    image_size: ImageSizePreset | None = Field(
        default=None,
        description="Default square_hd (1024x1024); with an input image, its aspect ratio at about 1 MP.",
    )
    num_inference_steps: int = Field(default=30, ge=2, le=250)
    seed: int | None = None
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=20,
        description="True CFG scale. Default 2.5 (text-to-image, image-to-image) or 4 (image-edit).",
    )
    enable_safety_checker: bool | None = Field(
        default=None,
        description="Default true (the provider's): check each image with the server's safety checker; "
        "`resultJson.has_nsfw_concepts` says which were flagged. A server without a checker says so in "
        "`resultJson.not_applied`.",
    )
    output_format: Literal["png", "jpeg"] = "png"
    negative_prompt: str | None = Field(default=None, max_length=MAX_NEGATIVE_PROMPT_CHARS)
    acceleration: Literal["none", "regular", "high"] = Field(
        default="none",
        description="The server's acceleration level of the same name (docs/engine.md): `regular` skips transformer "
        "blocks at steps that change little (First Block Cache, threshold 0.08); `high` runs the model's Lightning "
        "LoRA where the server has one (few steps, no CFG), else the same cache at threshold 0.2.",
    )
    loras: list[KieLora] | None = Field(
        default=None,
        max_length=MAX_REQUEST_LORAS,
        description=f"Up to {MAX_REQUEST_LORAS} LoRA adapters, as fal's models take them: `path` is the URL of a "
        ".safetensors file, or the name of an adapter this server offers; `scale` default 1.",
    )


class CreateTaskBody(BaseModel):
    """`POST /api/v1/jobs/createTask`."""

    model_config = ConfigDict(extra="forbid")

    model: KieModelName
    callBackUrl: str | None = Field(
        default=None,
        max_length=2048,
        json_schema_extra={"pattern": HTTP_URL_SPEC_PATTERN},  # within what `_http_url` checks
    )
    input: KieInput

    @field_validator("callBackUrl")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value


class TaskIdData(BaseModel):
    taskId: str


class ErrorOut(BaseModel):
    """The provider's error envelope, answered with HTTP 200 (500 for a fault of the server)."""

    code: int = Field(description="The error: 401, 402, 404, 422, 429, 455, 500, 501 ...")
    msg: str
    data: None = None


class CreateTaskOut(BaseModel):
    code: int = 200
    msg: str = "success"
    data: TaskIdData


class RecordData(BaseModel):
    """`data` of `GET /api/v1/jobs/recordInfo`: times in Unix milliseconds, costTime in milliseconds."""

    taskId: str
    model: str
    state: KieState
    param: str = Field(description="The create request, as a JSON string.")
    resultJson: str | None = Field(description='`{"resultUrls": [...]}` as a JSON string once state is success.')
    failCode: str = Field(description='A numeric string such as "501" when state is fail; else "".')
    failMsg: str
    costTime: int
    completeTime: int | None
    createTime: int
    updateTime: int


class RecordInfoOut(BaseModel):
    code: int = 200
    msg: str = "success"
    data: RecordData
