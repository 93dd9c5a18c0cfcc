"""Pure translation between the native wire shapes and the internal request and task."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qwen_image_server.api import outcome
from qwen_image_server.api.native.schemas import (
    CallbackAttemptOut,
    CallbackOut,
    CreateTaskBody,
    ErrorOut,
    ImageNoteOut,
    ProgressOut,
    ReportOut,
    RequestOut,
    ResultOut,
    TaskOut,
)
from qwen_image_server.domain import GenerationRequest, parse_size
from qwen_image_server.report import TaskReport
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.tasks.model import StoredImage, Task
from qwen_image_server.tasks.outbox import Callback


def to_generation_request(body: CreateTaskBody, images: tuple[bytes, ...]) -> GenerationRequest:
    width, height = body.width, body.height
    if body.size is not None:
        size = parse_size(body.size)
        width, height = size.width, size.height
    return GenerationRequest.create(
        model=body.model,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        num_inference_steps=body.num_inference_steps,
        true_cfg_scale=body.true_cfg_scale,
        guidance_scale=body.guidance_scale,
        seed=body.seed,
        num_images_per_prompt=body.n,
        output_format=body.output_format,
        output_quality=body.output_quality,
        max_sequence_length=body.max_sequence_length,
        partial_images=body.partial_images,
        acceleration=body.acceleration,
        loras=tuple(body.loras),
        watermark=body.watermark,
        prompt_extend=body.prompt_extend,
        safety_check=body.safety_check,
        images=images,
        strength=body.strength,
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _result_out(image: StoredImage, task: Task, link: ResultLinker) -> ResultOut:
    url, expires_at = link(image, task)
    return ResultOut(
        url=url,
        width=image.width,
        height=image.height,
        seed=image.seed,
        content_type=image.content_type,
        expires_at=_iso(expires_at) or "",
        index=image.index,
        partial_index=image.partial_index,
    )


def to_task_out(task: Task, link: ResultLinker, queue_position: int | None = None) -> TaskOut:
    request = task.request
    return TaskOut(
        id=task.id,
        model=task.model.value,
        status=task.status.value,
        queue_position=queue_position,
        progress=ProgressOut(step=task.progress.step, total=task.progress.total, percent=task.progress.percent),
        attempts=task.attempts,
        created_at=_iso(task.created_at) or "",
        started_at=_iso(task.started_at),
        finished_at=_iso(task.finished_at),
        request=RequestOut(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            true_cfg_scale=request.true_cfg_scale,
            seed=request.seed,
            n=request.num_images_per_prompt,
            output_format=request.output_format.value,
            input_images=request.input_image_count,
            acceleration=request.acceleration.value,
            strength=request.strength,
            loras=list(request.loras),
            watermark=request.watermark,
            prompt_extend=request.prompt_extend,
            safety_check=request.safety_check,
        ),
        results=[_result_out(image, task, link) for image in task.results],
        previews=[_result_out(image, task, link) for image in task.previews],
        error=ErrorOut(code=task.error.code, message=task.error.message) if task.error else None,
        report=_report_out(outcome.report_of(task)),
    )


def _report_out(report: TaskReport | None) -> ReportOut | None:
    if report is None:
        return None
    return ReportOut(
        actual_prompt=report.actual_prompt,
        applied=list(report.applied),
        not_applied=report.not_applied,
        images=[
            ImageNoteOut(index=i.index, seed=i.seed, nsfw=i.nsfw, withheld=i.withheld, nsfw_score=i.nsfw_score)
            for i in report.images
        ],
    )


def callback_payload(task: Task, link: ResultLinker) -> dict[str, Any]:
    """The body POSTed to a native task's `callback_url` when it ends, in the Standard Webhooks
    convention: an event `type`, when the event happened, and the task as GET /v1/tasks/{id} shows it."""
    return {
        "type": f"task.{task.status.value}",
        "timestamp": _iso(task.finished_at or task.updated_at),
        "data": to_task_out(task, link).model_dump(mode="json"),
    }


def to_callback_out(callback: Callback) -> CallbackOut:
    return CallbackOut(
        id=callback.id,
        task_id=callback.task_id,
        url=callback.url,
        status=callback.status.value,
        next_attempt_at=_iso(callback.next_attempt_at),
        created_at=_iso(callback.created_at) or "",
        attempts=[
            CallbackAttemptOut(
                number=attempt.number,
                started_at=_iso(attempt.started_at) or "",
                duration_ms=attempt.duration_ms,
                status_code=attempt.status_code,
                outcome=attempt.outcome.value,
                error=attempt.error,
            )
            for attempt in callback.attempts
        ],
    )
