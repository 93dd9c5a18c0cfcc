"""Pure translation between the OpenAI Images API and our request and task."""

from __future__ import annotations

import base64
import io
from collections.abc import Collection
from typing import cast

from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from qwen_image_server.api.openai.schemas import (
    OPENAI_MODEL_FAMILIES,
    AnsweredQuality,
    ImageOptions,
    InputTokensDetails,
    Usage,
)
from qwen_image_server.domain import GenerationRequest, ModelName, parse_size
from qwen_image_server.errors import InvalidImage, InvalidParameter, QwenImageError
from qwen_image_server.tasks.model import Task

OUR_MODELS = {model.value for model in ModelName}
# `quality` chooses the number of denoising steps; None keeps the model's default (50; 40 for
# edit-plus), which is what `high` is. The values are what the SDK sends; `auto` and the retired
# DALL-E qualities `standard` and `hd` mean the default.
QUALITY_STEPS: dict[str, int | None] = {
    "low": 20,
    "medium": 30,
    "high": None,
    "xhigh": 75,
    "max": 100,
    "auto": None,
    "standard": None,
    "hd": None,
}
DEFAULT_QUALITY: AnsweredQuality = "high"
TOKEN_PIXELS = 16 * 16  # Qwen-Image makes one image token per 16x16 pixels


def is_openai_model(name: str) -> bool:
    return name.startswith(OPENAI_MODEL_FAMILIES)


def generation_model(name: str | None) -> ModelName:
    if name is None or is_openai_model(name) or name == ModelName.QWEN_IMAGE.value:
        return ModelName.QWEN_IMAGE
    raise _unknown_model(name, [ModelName.QWEN_IMAGE.value])


def edit_model(name: str | None, images: int, masked: bool, served: Collection[ModelName]) -> ModelName:
    """The model that serves an edit: inpainting for a mask, else edit (1 image) or edit-plus."""
    if name is not None and not is_openai_model(name) and name not in OUR_MODELS:
        raise _unknown_model(name, sorted(OUR_MODELS))
    if masked:
        return ModelName.QWEN_IMAGE
    if name in OUR_MODELS and name != ModelName.QWEN_IMAGE.value:
        return ModelName(name)
    if images == 1 and ModelName.QWEN_IMAGE_EDIT in served:
        return ModelName.QWEN_IMAGE_EDIT
    return ModelName.QWEN_IMAGE_EDIT_PLUS


def _unknown_model(name: str, supported: list[str]) -> InvalidParameter:
    choices = ", ".join(f"'{value}'" for value in supported)
    families = ", ".join(f"'{family}*'" for family in OPENAI_MODEL_FAMILIES)
    message = f"Invalid value: '{name}'. Supported values are: {choices}, or an OpenAI image model ({families})."
    error = InvalidParameter(message, param="model")
    error.code = "invalid_value"
    return error


def to_generation_request(
    options: ImageOptions, model: ModelName, images: tuple[bytes, ...] = (), mask: bytes | None = None
) -> GenerationRequest:
    if options.background == "transparent":
        raise InvalidParameter("transparent backgrounds are not supported by Qwen-Image", param="background")
    size = None if options.size == "auto" else parse_size(options.size)
    quality = 90 if options.output_compression is None else max(options.output_compression, 1)
    return GenerationRequest.create(
        model=model,
        prompt=options.prompt,
        width=size.width if size else None,
        height=size.height if size else None,
        num_inference_steps=QUALITY_STEPS[options.quality],
        num_images_per_prompt=options.n,
        output_format=options.output_format,
        output_quality=quality,
        partial_images=options.partial_images if options.stream else 0,
        images=images,
        mask=mask,
        safety_check=True,  # OpenAI moderates every image, whatever `moderation` says
    ).with_not_applied(request_notes(options))


# Options OpenAI's models act on and Qwen-Image has nothing for: accepted (the SDK sends them) and
# reported in the answer's `not_applied`. `user` and `safety_identifier` only name the caller.
UNUSED_OPTIONS = {
    "style": "not applied: DALL-E 3's style has no counterpart in Qwen-Image; describe the look in the prompt",
    "input_fidelity": "not applied: Qwen-Image has no input fidelity setting; edits keep what the prompt leaves",
}


def request_notes(options: ImageOptions) -> dict[str, str]:
    """The options sent that this server does not apply, with why."""
    return {option: why for option, why in UNUSED_OPTIONS.items() if getattr(options, option) is not None}


def inpainting_mask(data: bytes) -> bytes:
    """OpenAI masks mark the area to edit with full transparency; ours mark it white on black."""
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError):
        raise InvalidImage("the mask is not a readable PNG", param="mask") from None
    if "A" not in picture.getbands() and "transparency" not in picture.info:
        raise InvalidImage("the mask must have an alpha channel; transparent areas mark what to edit", param="mask")
    alpha = picture.convert("RGBA").getchannel("A")
    repaint = alpha.point(lambda value: 255 if value == 0 else 0)
    buffer = io.BytesIO()
    repaint.save(buffer, format="PNG")
    return buffer.getvalue()


def usage(task: Task) -> Usage:
    request = task.request
    image_tokens = request.input_image_count * (request.width * request.height) // TOKEN_PIXELS
    output = request.num_images_per_prompt * (request.width * request.height) // TOKEN_PIXELS
    details = InputTokensDetails(image_tokens=image_tokens, text_tokens=0)
    return Usage(input_tokens=image_tokens, input_tokens_details=details, output_tokens=output,
                 total_tokens=image_tokens + output)  # fmt: skip


def size_of(task: Task) -> str:
    return f"{task.request.width}x{task.request.height}"


def quality_of(options: ImageOptions) -> AnsweredQuality:
    """The quality used, in OpenAI's answer's terms: the default steps are `high`."""
    if QUALITY_STEPS[options.quality] is None:
        return DEFAULT_QUALITY
    return cast(AnsweredQuality, options.quality)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 410: "invalid_request_error",
                413: "invalid_request_error",
                429: "rate_limit_error"}  # fmt: skip


def openai_error(exc: QwenImageError) -> Response:
    """`{"error": {"message", "type", "param", "code"}}` with OpenAI's status conventions."""
    error_type = _ERROR_TYPES.get(exc.status, "server_error")
    body = {"error": {"message": exc.message, "type": error_type, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)
