"""Wire shapes of Pixwith's task API (`/api/task/...`), with the provider's field names.

Every answer is the envelope `{code, message, data}`: code 1 on success, 0 on error. Where Pixwith
marks a field required but a default is obvious (`options`, `num_outputs`, `prompt_optimization`),
we apply the default instead of refusing the request. Unknown fields are ignored.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from qwen_image_server.api.outcome import NotApplied, NsfwFlags, Withheld
from qwen_image_server.api.wire import PROMPT_SPEC_PATTERN, LenientRequest

AspectRatio = Literal["3:4", "9:16", "4:3", "16:9"]
PixwithStatus = Literal[1, 2, 3]  # 1 processing, 2 completed, 3 failed

QWEN_IMAGE_MODEL_ID = "0-24"


class Options(LenientRequest):
    prompt_optimization: bool = Field(
        default=False,
        description="Translate the prompt into English first, as Pixwith does (the loaded language model; a server "
        "with prompt extension off uses the prompt as given).",
    )
    num_outputs: int = Field(default=1, ge=1, le=4)
    aspect_ratio: AspectRatio | None = Field(default=None, description="Text-to-image only.")


class CreateBody(LenientRequest):
    """`POST /api/task/create`."""

    prompt: str = Field(json_schema_extra={"minLength": 1, "pattern": PROMPT_SPEC_PATTERN})
    image_urls: list[str] | None = Field(default=None, description="One image: image-to-image mode.")
    model_id: str = Field(
        description=f"{QWEN_IMAGE_MODEL_ID} (Qwen Image).",
        json_schema_extra={"enum": [QWEN_IMAGE_MODEL_ID]},  # what `_served_model` checks, with its own message
    )
    options: Options = Field(default_factory=Options)

    @field_validator("model_id")
    @classmethod
    def _served_model(cls, value: str) -> str:
        if value != QWEN_IMAGE_MODEL_ID:
            raise ValueError(f"unknown model {value!r}; this server serves {QWEN_IMAGE_MODEL_ID} (Qwen Image)")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if not self.image_urls:  # absent, null or []: text-to-image
            return self
        if len(self.image_urls) != 1:
            raise ValueError(f"image_urls takes exactly one image, got {len(self.image_urls)}")
        if self.options.aspect_ratio is not None:
            raise ValueError("options.aspect_ratio is only allowed for text-to-image (without image_urls)")
        return self


class GetBody(LenientRequest):
    """`POST /api/task/get`."""

    task_id: str = Field(min_length=1)


class CreateData(BaseModel):
    task_id: str
    estimated_time: int = Field(description="Estimated seconds until the results are ready.")


class CreateOut(BaseModel):
    code: int = 1
    message: str = "success"
    data: CreateData


class TaskData(BaseModel):
    task_id: str
    status: PixwithStatus
    result_urls: list[str]
    error_message: str | None = Field(
        default=None, description="Our addition: why the task failed (status 3 only; absent otherwise)."
    )
    not_applied: NotApplied = None
    withheld: Withheld = None
    nsfw: NsfwFlags = None  # one per URL of `result_urls`


class GetOut(BaseModel):
    code: int = 1
    message: str = "success"
    data: TaskData


class ErrorOut(BaseModel):
    code: int = 0
    message: str
    data: None = None
