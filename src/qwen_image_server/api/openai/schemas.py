"""Wire shapes of the OpenAI Images API (`/v1/images/generations`, `/v1/images/edits`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwen_image_server.api.outcome import NotApplied, NsfwFlags, Withheld
from qwen_image_server.api.wire import PROMPT_SPEC_PATTERN, size_text_pattern
from qwen_image_server.domain import MAX_SIDE, MIN_SIDE, SIZE_PRESETS, ModelName

# Every quality the openai package sends (`standard` and `hd` are the retired DALL-E ones), and the
# ones OpenAI answers with: what `auto`, `standard` and `hd` come to here (translate.QUALITY_STEPS).
Quality = Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"]
AnsweredQuality = Literal["low", "medium", "high", "xhigh", "max"]

# Clients written for OpenAI often hard-code its model names; they get ours. OpenAI adds names (and
# dated snapshots of them) often, so every name of its image model families is taken, not a list.
OPENAI_MODEL_FAMILIES = ("gpt-image-", "chatgpt-image-", "dall-e-")


def _model_pattern(*ours: str) -> str:
    """Any name of OpenAI's image families, or one of `ours` (translate.generation_model, edit_model)."""
    return rf"^(?:(?:{'|'.join(OPENAI_MODEL_FAMILIES)})|(?:{'|'.join(ours)})$)"


# `auto`, or what parse_size reads with sides the model can make (GenerationRequest checks them).
SIZE_SPEC_PATTERN = rf"^auto$|{size_text_pattern(MIN_SIDE, MAX_SIDE, names=tuple(SIZE_PRESETS))}"


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

    error: OpenAIError


class ImageOptions(BaseModel):
    """The fields generations and edits share (edits arrive as multipart form fields)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI adds fields often; unknown ones are ignored

    prompt: str = Field(min_length=1, max_length=32_000, json_schema_extra={"pattern": PROMPT_SPEC_PATTERN})
    model: str | None = Field(
        default=None, json_schema_extra={"pattern": _model_pattern(*(m.value for m in ModelName))}
    )
    n: int = Field(default=1, ge=1, le=10)
    size: str = Field(default="auto", json_schema_extra={"pattern": SIZE_SPEC_PATTERN})
    quality: Quality = "auto"
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Literal["auto", "opaque", "transparent"] = Field(
        default="auto",
        description="`transparent` is refused (400 invalid_parameter): Qwen-Image makes no alpha channel.",
        json_schema_extra={"enum": ["auto", "opaque"]},  # what is accepted; `transparent` gets its own message
    )
    stream: bool = False
    partial_images: int = Field(default=0, ge=0, le=3)
    user: str | None = None
    # Accepted: style (dall-e-3) and input_fidelity reported in `not_applied` (translate.UNUSED_OPTIONS);
    # safety_identifier, like user, only names the caller.
    style: str | None = None
    # OpenAI moderates every image; here each is checked by the server's safety checker (when one is
    # configured), `low` as strictly as `auto` (the checker has one threshold).
    moderation: Literal["auto", "low"] | None = None
    input_fidelity: str | None = None
    safety_identifier: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, fields: Any) -> Any:
        """The openai package sends null for an argument given as None: it asks for the default.
        (A missing or null prompt is still answered "prompt is required".)"""
        if isinstance(fields, dict):
            return {name: value for name, value in fields.items() if value is not None}
        return fields


class GenerationBody(ImageOptions):
    model: str | None = Field(default=None, json_schema_extra={"pattern": _model_pattern(ModelName.QWEN_IMAGE.value)})


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    image_tokens: int
    text_tokens: int


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: str
    output_format: str
    quality: AnsweredQuality
    size: str
    usage: Usage
    not_applied: NotApplied = None
    withheld: Withheld = None
    nsfw: NsfwFlags = None  # one per entry of `data`
