"""Pure translation between Novita's wire shapes and the internal request and task."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from qwen_image_server.api import outcome
from qwen_image_server.api.novita.schemas import (
    NOVITA_MAX_SIDE,
    NOVITA_MIN_SIDE,
    DebugInfoOut,
    EditBody,
    ErrorOut,
    ExtraIn,
    ExtraOut,
    ImageOut,
    NovitaStatus,
    NsfwResultOut,
    TaskOut,
    TaskResultOut,
    Txt2ImgBody,
)
from qwen_image_server.domain import (
    GenerationRequest,
    ModelName,
    OutputFormat,
    Size,
    parse_size,
    size_keeping_input,
)
from qwen_image_server.errors import InvalidParameter, InvalidRequest, QwenImageError
from qwen_image_server.report import ImageNote
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.tasks.model import Task, TaskStatus, utcnow

DIALECT_NAME = "novita"
RANDOM_SEED = -1
TASK_TYPES = {
    ModelName.QWEN_IMAGE: "QWEN_IMAGE_TEXT_TO_IMAGE",
    ModelName.QWEN_IMAGE_EDIT: "QWEN_IMAGE_EDIT",
    ModelName.QWEN_IMAGE_EDIT_PLUS: "QWEN_IMAGE_EDIT",  # tasks made through other dialects
}
STATUSES: dict[TaskStatus, NovitaStatus] = {
    TaskStatus.QUEUED: "TASK_STATUS_QUEUED",
    TaskStatus.RUNNING: "TASK_STATUS_PROCESSING",
    TaskStatus.SUCCEEDED: "TASK_STATUS_SUCCEED",
    TaskStatus.FAILED: "TASK_STATUS_FAILED",
    TaskStatus.CANCELED: "TASK_STATUS_FAILED",  # Novita has no canceled state; `reason` says so
}
WEBHOOK_EVENT = "ASYNC_TASK_RESULT"


# -- requests ------------------------------------------------------------------------------------


def txt2img_request(body: Txt2ImgBody) -> GenerationRequest:
    size = novita_size(body.size)
    return GenerationRequest.create(
        model=ModelName.QWEN_IMAGE,
        prompt=body.prompt,
        width=size.width,
        height=size.height,
        output_format=OutputFormat.JPEG,  # what Novita answers (its example's image_type)
        safety_check=_nsfw_detection(body.extra),
    )


def _nsfw_detection(extra: ExtraIn | None) -> bool:
    return extra is not None and extra.enable_nsfw_detection


def edit_request(body: EditBody, image: bytes) -> GenerationRequest:
    size = size_keeping_input(image)
    return GenerationRequest.create(
        model=ModelName.QWEN_IMAGE_EDIT,
        prompt=body.prompt,
        images=(image,),
        width=size.width,
        height=size.height,
        seed=None if body.seed == RANDOM_SEED else body.seed,
        output_format=body.output_format,
        safety_check=_nsfw_detection(body.extra),
    )


def webhook_url(extra: ExtraIn | None) -> str | None:
    return extra.webhook.url if extra is not None and extra.webhook is not None else None


def novita_size(text: str) -> Size:
    """`W*H` within Novita's range (256-1536 per side), any size in it (the engine makes it exactly)."""
    size = parse_size(text)
    for name, value in (("width", size.width), ("height", size.height)):
        if not NOVITA_MIN_SIDE <= value <= NOVITA_MAX_SIDE:
            raise InvalidParameter(
                f"size {text!r}: the {name} must be {NOVITA_MIN_SIDE} to {NOVITA_MAX_SIDE} pixels, got {value}",
                param="size",
            )
    return size


# -- task results --------------------------------------------------------------------------------


def task_result(task: Task, link: ResultLinker, *, now: datetime | None = None) -> TaskResultOut:
    """The `GET /v3/async/task-result` body for `task`."""
    now = now or utcnow()
    found: list[ImageOut] = []
    checks = {note.index: note for note in task.report.images} if task.report else {}
    if task.status is TaskStatus.SUCCEEDED:
        for image in task.results:
            url, expires = link(image, task)
            ttl = max(int((expires - now).total_seconds()), 0)
            note = checks.get(image.index)
            verdict = _nsfw_result(note) if note is not None else None
            found.append(ImageOut(image_url=url, image_url_ttl=str(ttl), image_type=image.output_format.value,
                                  nsfw_detection_result=verdict))  # fmt: skip
    return TaskResultOut(
        extra=ExtraOut(
            seed=str(task.request.seed),
            enable_nsfw_detection=task.request.safety_check,
            # One per entry of `images` (only delivered images are listed); the rest in `withheld`.
            has_nsfw_contents=(outcome.nsfw_flags(task) or []) if task.status is TaskStatus.SUCCEEDED else [],
            not_applied=outcome.not_applied(task),
            withheld=outcome.withheld(task),
            debug_info=DebugInfoOut(
                submit_time_ms=_millis(task.created_at),
                execute_time_ms=_millis(task.started_at),
                complete_time_ms=_millis(task.finished_at),
            ),
        ),
        task=TaskOut(
            task_id=task.id,
            task_type=TASK_TYPES[task.model],
            status=STATUSES[task.status],
            reason=failure_reason(task),
            eta=eta_seconds(task, now),
            progress_percent=progress_percent(task),
        ),
        images=found,
    )


def _nsfw_result(note: ImageNote) -> NsfwResultOut | None:
    if note.nsfw is None:
        return None
    return NsfwResultOut(valid=not note.nsfw, confidence=note.nsfw_score if note.nsfw_score is not None else 1.0)


def callback_payload(task: Task, link: ResultLinker, *, now: datetime | None = None) -> dict[str, Any]:
    """What Novita POSTs to `extra.webhook.url` when a task ends (delivery comes later)."""
    return {"event_type": WEBHOOK_EVENT, "payload": task_result(task, link, now=now).model_dump(mode="json")}


def failure_reason(task: Task) -> str:
    if task.status is TaskStatus.CANCELED:
        detail = task.error.message if task.error else ""
        return f"task canceled: {detail}" if detail else "task canceled"
    if task.status is TaskStatus.FAILED:
        return task.error.message if task.error else "generation failed"
    return ""


def progress_percent(task: Task) -> int:
    if task.status is TaskStatus.SUCCEEDED:
        return 100
    return int(task.progress.percent)


def eta_seconds(task: Task, now: datetime) -> int:
    """Remaining seconds at the pace of the steps done so far; 0 when there is no pace yet."""
    step, total = task.progress.step, task.progress.total
    if task.status is not TaskStatus.RUNNING or task.started_at is None or step <= 0 or total <= step:
        return 0
    elapsed = (now - task.started_at).total_seconds()
    return max(math.ceil(elapsed / step * (total - step)), 0)


def _millis(moment: datetime | None) -> str:
    return str(int(moment.timestamp() * 1000)) if moment else "0"


# -- errors --------------------------------------------------------------------------------------

# Novita answers errors as {code, reason, message, metadata}; `code` is the HTTP status and
# `reason` an upper-case word. Invalid input of any kind is INVALID_REQUEST_BODY there.
_REASONS = {
    "task_not_found": "TASK_NOT_FOUND",
    "not_found": "NOT_FOUND",
    "method_not_allowed": "METHOD_NOT_ALLOWED",
    "payload_too_large": "PAYLOAD_TOO_LARGE",
    "model_not_found": "MODEL_NOT_FOUND",
    "model_unavailable": "SERVICE_UNAVAILABLE",
    "task_conflict": "TASK_CONFLICT",
    "internal_error": "INTERNAL_SERVER_ERROR",
    "generation_failed": "INTERNAL_SERVER_ERROR",
}
_STATUS_REASONS = {401: "INVALID_API_KEY", 403: "FORBIDDEN", 429: "RATE_LIMIT_EXCEEDED"}


def error_body(exc: QwenImageError) -> ErrorOut:
    if isinstance(exc, InvalidRequest):
        reason = "INVALID_REQUEST_BODY"
    else:
        reason = _STATUS_REASONS.get(exc.status) or _REASONS.get(exc.code) or exc.code.upper()
    metadata = {"param": exc.param} if exc.param else {}
    return ErrorOut(code=exc.status, reason=reason, message=exc.message, metadata=metadata)
