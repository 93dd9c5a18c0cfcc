"""Pure translation between fal's queue API and the internal request and task: the model inputs to a
`GenerationRequest`, a task to fal's status, output and webhook body, our errors to fal's."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qwen_image_server.api import outcome
from qwen_image_server.api.fal.schemas import (
    CommonInput,
    EditInput,
    EditPlusInput,
    FalLora,
    ImageOut,
    ImageSize,
    ImageToImageInput,
    LogLine,
    OutputOut,
    StatusOut,
    TextToImageInput,
)
from qwen_image_server.domain import MAX_SEQUENCE_LENGTH_CAP, GenerationRequest, ModelName, Size, check_side
from qwen_image_server.errors import (
    ContentWithheld,
    IdempotencyKeyReused,
    ImageSourceUnavailable,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    LoraUnavailable,
    QwenImageError,
    UrlNotAllowed,
    caller_fault_of,
)
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.safe_fetch import HTTP_URL_PATTERN
from qwen_image_server.tasks.model import StoredImage, Task, TaskStatus

DIALECT_NAME = "fal"
# A task submitted with `sync_mode` remembers it by its dialect's name, so that its result, read
# later and maybe by another process, is rendered with data URIs (webhooks get URLs either way).
SYNC_MODE_DIALECT = "fal-sync"
OWNER = "fal-ai"

FAL_APPS: dict[str, ModelName] = {
    "qwen-image": ModelName.QWEN_IMAGE,
    "qwen-image/image-to-image": ModelName.QWEN_IMAGE,  # qwen-image starting from `image_url`
    "qwen-image-edit": ModelName.QWEN_IMAGE_EDIT,
    "qwen-image-edit-plus": ModelName.QWEN_IMAGE_EDIT_PLUS,
}
# fal's request URLs name the app without its path (`fal-ai/qwen-image/requests/{id}` also for a
# request submitted to `fal-ai/qwen-image/image-to-image`), as fal-client builds them from an app id.
APP_OF_MODEL = {model: app for app, model in FAL_APPS.items() if "/" not in app}

# fal's toolkit presets (not Qwen's native 1328-pixel sizes).
IMAGE_SIZES: dict[str, Size] = {
    "square_hd": Size(1024, 1024),
    "square": Size(512, 512),
    "portrait_4_3": Size(768, 1024),
    "portrait_16_9": Size(576, 1024),
    "landscape_4_3": Size(1024, 768),
    "landscape_16_9": Size(1024, 576),
}


@dataclass(frozen=True)
class Defaults:
    """What fal's page of each model gives a field the caller leaves out."""

    steps: int
    guidance: float
    acceleration: str
    image_size: str | None  # None: the input image's aspect ratio at about 1 MP


MODEL_DEFAULTS: dict[ModelName, Defaults] = {
    ModelName.QWEN_IMAGE: Defaults(30, 2.5, "none", "landscape_4_3"),
    ModelName.QWEN_IMAGE_EDIT: Defaults(30, 4.0, "regular", None),
    ModelName.QWEN_IMAGE_EDIT_PLUS: Defaults(50, 4.0, "regular", "square_hd"),
}


def input_image_refs(body: CommonInput) -> list[str]:
    """The input images to fetch (URLs or data URIs), in order."""
    if isinstance(body, EditInput | ImageToImageInput):
        return [body.image_url]
    if isinstance(body, EditPlusInput):
        return list(body.image_urls)
    return []


def named_as_sent(exc: QwenImageError, body: CommonInput) -> None:
    """Name the field in `exc` as the caller sent it: an input image (the image reader says
    `images[i]`) or an adapter (the domain says `loras.i.name` or `loras.i.path`; fal has `path`)."""
    image = re.fullmatch(r"images\[(\d+)\]", exc.param or "")
    if image is not None:
        one = isinstance(body, EditInput | ImageToImageInput)
        exc.param = "image_url" if one else f"image_urls.{image.group(1)}"
    lora = re.fullmatch(r"loras\.(\d+)\.(name|path)", exc.param or "")
    if lora is not None:
        exc.param = f"loras.{lora.group(1)}.path"


def default_level(model: ModelName, *, can_accelerate: bool) -> str:
    """The level a request that sends no `acceleration` gets: fal's default for the app, or `none` on a
    server that cannot run the cache levels (compile=true), reported by `request_notes`."""
    level = MODEL_DEFAULTS[model].acceleration
    return level if can_accelerate else "none"


def request_notes(model: ModelName, body: CommonInput, *, can_accelerate: bool) -> dict[str, str]:
    """What the request sent or was given by default and this server does not do, with why. The
    route adds them to the request (`GenerationRequest.not_applied`), which the task stores: the
    submit answer, the status, the result and the webhook all show them in `not_applied`."""
    notes: dict[str, str] = {}
    default = MODEL_DEFAULTS[model].acceleration
    if body.acceleration is None and default != default_level(model, can_accelerate=can_accelerate):
        notes["acceleration"] = (
            f"not applied: fal's default for this app is '{default}', which this server cannot run "
            "(compile=true); the request runs with 'none'"
        )
    for index, lora in enumerate(getattr(body, "loras", None) or ()):
        if lora.force:
            notes[f"loras.{index}.force"] = "not applied: every adapter sent is loaded and applied here anyway"
    return notes


def to_generation_request(
    model: ModelName, body: CommonInput, images: tuple[bytes, ...], *, can_accelerate: bool = True
) -> GenerationRequest:
    """`can_accelerate`: whether this server runs the cache levels (not with compile=true), which
    decides what an unsent `acceleration` means (`default_level`)."""
    defaults = MODEL_DEFAULTS[model]
    # Image-to-image without a size keeps the input's aspect ratio at about 1 MP, as the edits do.
    default_size = None if isinstance(body, ImageToImageInput) else defaults.image_size
    size = _size(body.image_size or default_size)
    acceleration = body.acceleration or default_level(model, can_accelerate=can_accelerate)
    loras: tuple[dict[str, Any], ...] = ()
    if isinstance(body, TextToImageInput):
        acceleration = _with_turbo(body, acceleration)
        loras = tuple(_lora_choice(lora) for lora in body.loras or ())
    return GenerationRequest.create(
        model=model,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=size.width if size else None,
        height=size.height if size else None,
        num_inference_steps=body.num_inference_steps or defaults.steps,
        # Qwen-Image is not guidance-distilled: fal's guidance_scale is diffusers' true_cfg_scale.
        true_cfg_scale=body.guidance_scale if body.guidance_scale is not None else defaults.guidance,
        seed=body.seed,
        num_images_per_prompt=body.num_images,
        output_format=body.output_format,
        max_sequence_length=MAX_SEQUENCE_LENGTH_CAP,  # fal sets no prompt limit of its own
        acceleration=acceleration,
        loras=loras,
        safety_check=body.enable_safety_checker,
        images=images,
        strength=body.strength if isinstance(body, ImageToImageInput) else None,
    )


def _size(choice: str | ImageSize | None) -> Size | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in IMAGE_SIZES:
            presets = ", ".join(IMAGE_SIZES)
            raise InvalidParameter(f"image_size must be one of {presets} or {{width, height}}", param="image_size")
        return IMAGE_SIZES[choice]
    check_side("image_size.width", choice.width)  # named as the caller wrote it, not as the domain does
    check_side("image_size.height", choice.height)
    return Size(choice.width, choice.height)


def _with_turbo(body: TextToImageInput, acceleration: str) -> str:
    """`use_turbo` asks for the few-step path, which is our `high` level."""
    if not body.use_turbo:
        return acceleration
    if body.acceleration not in (None, "high"):
        raise InvalidParameter(
            f"use_turbo is acceleration 'high' here; it cannot go with acceleration '{body.acceleration}'",
            param="use_turbo",
        )
    return "high"


def _lora_choice(lora: FalLora) -> dict[str, Any]:
    """fal's `{path, scale}`: a URL to download, or the name of an adapter the server offers."""
    if re.match(HTTP_URL_PATTERN, lora.path):
        return {"path": lora.path, "scale": lora.scale}
    return {"name": lora.path, "scale": lora.scale}


# -- tasks back to fal's shapes ---------------------------------------------------------------------


@dataclass(frozen=True)
class RequestUrls:
    """Where a request is polled, fetched and canceled: `{base}/fal-ai/{app}/requests/{id}`."""

    response_url: str

    @classmethod
    def of(cls, base_url: str, task: Task) -> RequestUrls:
        app = APP_OF_MODEL[task.model]
        return cls(f"{base_url.rstrip('/')}/{OWNER}/{app}/requests/{task.id}")

    @property
    def status_url(self) -> str:
        return f"{self.response_url}/status"

    @property
    def cancel_url(self) -> str:
        return f"{self.response_url}/cancel"


def status_out(task: Task, position: int | None, urls: RequestUrls, *, with_logs: bool) -> StatusOut:
    common = {
        "request_id": task.id,
        "response_url": urls.response_url,
        "status_url": urls.status_url,
        "cancel_url": urls.cancel_url,
        "not_applied": outcome.not_applied(task),  # in every state: also a request that failed or was canceled
    }
    if task.status is TaskStatus.QUEUED:
        return StatusOut(status="IN_QUEUE", queue_position=position or 0, **common)
    logs = log_lines(task) if with_logs else None
    if not task.status.is_terminal:
        return StatusOut(status="IN_PROGRESS", logs=logs, **common)
    failure = None if task.status is TaskStatus.SUCCEEDED else failure_of(task)
    return StatusOut(
        status="COMPLETED",
        logs=logs,
        metrics={"inference_time": inference_seconds(task)},
        error=failure.message if failure else None,
        error_type=fal_error_type(failure) if failure else None,
        **common,
    )


def log_lines(task: Task) -> list[LogLine]:
    """What we know of a run as fal log lines: its start, its latest step, its end."""
    lines: list[LogLine] = []
    if task.started_at is not None:
        lines.append(LogLine(message=f"started (attempt {task.attempts})", timestamp=_iso(task.started_at)))
    if task.progress.total:
        step, total = task.progress.step, task.progress.total
        message = f"step {step}/{total} ({task.progress.percent:g}%)"
        lines.append(LogLine(message=message, timestamp=_iso(task.updated_at)))
    if task.finished_at is not None:
        if task.status is TaskStatus.SUCCEEDED:
            lines.append(LogLine(message=f"done: {len(task.results)} images", timestamp=_iso(task.finished_at)))
        else:
            ended = failure_of(task).message
            lines.append(LogLine(message=ended, level="ERROR", timestamp=_iso(task.finished_at)))
    return lines


def output_of(task: Task, url_of: Callable[[StoredImage], str]) -> OutputOut:
    """The model output of a succeeded task; `url_of` gives each image's URL (or data URI)."""
    return OutputOut(
        images=[
            ImageOut(
                url=url_of(image),
                content_type=image.content_type,
                file_name=image.key.rsplit("/", 1)[-1],
                file_size=image.size_bytes,
                width=image.width,
                height=image.height,
            )
            for image in task.results
        ],
        seed=task.request.seed,
        # Per delivered image (fal's lists line up; all false when no check ran); images kept back
        # are in `withheld`, not in `images`.
        has_nsfw_concepts=outcome.nsfw_flags(task) or [False] * len(task.results),
        prompt=task.request.prompt,
        timings={"inference": inference_seconds(task)},
        not_applied=outcome.not_applied(task),
        withheld=outcome.withheld(task),
    )


def callback_payload(task: Task, link: ResultLinker) -> dict[str, Any]:
    """fal's webhook body: `payload` is the output (with URLs, also for `sync_mode`), or for a failed
    or canceled request the error body its result call answers with; `error` then names the status,
    as fal's does."""
    if not task.status.is_terminal:
        raise ValueError(f"task {task.id} is {task.status}; callbacks are sent only when a task ends")
    common = {"request_id": task.id, "gateway_request_id": task.id}
    if task.status is TaskStatus.SUCCEEDED:
        payload = output_of(task, lambda image: link(image, task)[0]).model_dump(exclude_none=True)
        return {**common, "status": "OK", "payload": payload, "error": None}
    status, body = error_body(failure_of(task))
    return {**common, "status": "ERROR", "payload": body, "error": f"Invalid status code: {status}"}


def inference_seconds(task: Task) -> float:
    if task.started_at is None or task.finished_at is None:
        return 0.0
    return round(max((task.finished_at - task.started_at).total_seconds(), 0.0), 3)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


# -- errors ----------------------------------------------------------------------------------------


class RequestFailed(QwenImageError):
    """A failed or canceled task's error, raised again for its result call (by its stored code)."""

    def __init__(self, code: str, message: str, *, caller_fault: bool, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.caller_fault = caller_fault
        self.status = status


CANCELED = "canceled"


def failure_of(task: Task) -> RequestFailed:
    if task.error is None:  # canceled (fal's cancel, or another API's)
        return RequestFailed(CANCELED, "the request was canceled", caller_fault=True, status=499)
    caller = caller_fault_of(task.error.code)
    return RequestFailed(task.error.code, task.error.message, caller_fault=caller, status=422 if caller else 500)


# Input errors are fal's "model errors": HTTP 422 with FastAPI's list, typed as fal types them.
_MODEL_ERROR_TYPES = {
    ContentWithheld.code: "content_policy_violation",
    InvalidImage.code: "image_load_error",
    ImageSourceUnavailable.code: "file_download_error",
    UrlNotAllowed.code: "file_download_error",
    LoraUnavailable.code: "file_download_error",
}
# The rest are fal's "request errors": `{detail, error_type}` (the type also in X-Fal-Error-Type).
_REQUEST_ERROR_TYPES = {
    "run_timed_out": ("request_timeout", 504),
    "client_closed_request": ("client_disconnected", 499),
    CANCELED: ("client_cancelled", 499),
    "generation_failed": ("runner_server_error", 500),
}


def is_model_error(exc: QwenImageError) -> bool:
    if isinstance(exc, IdempotencyKeyReused):
        return False
    return isinstance(exc, InvalidRequest | ContentWithheld) or (exc.caller_fault and exc.status == 422)


def fal_error_type(exc: QwenImageError) -> str | None:
    if is_model_error(exc):
        return _MODEL_ERROR_TYPES.get(exc.code, "value_error")
    if exc.code in _REQUEST_ERROR_TYPES:
        return _REQUEST_ERROR_TYPES[exc.code][0]
    return "internal_error" if exc.status >= 500 and not exc.caller_fault else None


def error_body(exc: QwenImageError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) in fal's shape."""
    error_type = fal_error_type(exc)
    if is_model_error(exc):
        # List indexes are integers, as in FastAPI's own validation errors (`["body", "loras", 0, "path"]`).
        parts = exc.param.split(".") if exc.param else []
        location: list[str | int] = ["body", *(int(part) if part.isdigit() else part for part in parts)]
        return 422, {"detail": [{"loc": location, "msg": exc.message, "type": error_type}]}
    status = _REQUEST_ERROR_TYPES[exc.code][1] if exc.code in _REQUEST_ERROR_TYPES else exc.status
    body: dict[str, Any] = {"detail": exc.message}
    if error_type is not None:
        body["error_type"] = error_type
    return status, body
