"""Pure translation between Pixwith's wire shapes and the internal request and task."""

from __future__ import annotations

from qwen_image_server.api import outcome
from qwen_image_server.api.pixwith.schemas import CreateBody, ErrorOut, PixwithStatus, TaskData
from qwen_image_server.domain import (
    GenerationRequest,
    ModelName,
    OutputFormat,
    Size,
    size_for_aspect,
    size_keeping_input,
)
from qwen_image_server.errors import QwenImageError
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.tasks.model import Task, TaskStatus

DIALECT_NAME = "pixwith"
# Pixwith's sizes are not published; these keep its aspect ratios at about 1 MP on the 16-pixel grid.
ASPECT_SIZES = {
    "3:4": size_for_aspect(3, 4),  # 880x1184
    "9:16": size_for_aspect(9, 16),  # 768x1360
    "4:3": size_for_aspect(4, 3),  # 1184x880
    "16:9": size_for_aspect(16, 9),  # 1360x768
}
SQUARE = Size(1024, 1024)  # text-to-image without an aspect ratio
SECONDS_PER_IMAGE = 15  # the provider's own example estimate, per image
STATUSES: dict[TaskStatus, PixwithStatus] = {
    TaskStatus.QUEUED: 1,
    TaskStatus.RUNNING: 1,
    TaskStatus.SUCCEEDED: 2,
    TaskStatus.FAILED: 3,
    TaskStatus.CANCELED: 3,
}


def to_generation_request(body: CreateBody, inputs: tuple[bytes, ...]) -> GenerationRequest:
    """Text-to-image without `image_urls`, qwen-image-edit with one."""
    if inputs:
        model, size = ModelName.QWEN_IMAGE_EDIT, size_keeping_input(inputs[0])
    else:
        ratio = body.options.aspect_ratio
        model, size = ModelName.QWEN_IMAGE, ASPECT_SIZES[ratio] if ratio else SQUARE
    return GenerationRequest.create(
        model=model,
        prompt=body.prompt,
        images=inputs,
        width=size.width,
        height=size.height,
        num_images_per_prompt=body.options.num_outputs,
        output_format=OutputFormat.JPEG,  # Pixwith's result URLs are JPEG
        prompt_translate=body.options.prompt_optimization,
    )


def estimated_time(request: GenerationRequest) -> int:
    return SECONDS_PER_IMAGE * request.num_images_per_prompt


def task_data(task: Task, link: ResultLinker) -> TaskData:
    """The `data` of `POST /api/task/get` for `task`."""
    ok = task.status is TaskStatus.SUCCEEDED
    urls = [link(image, task)[0] for image in task.results] if ok else []
    return TaskData(
        task_id=task.id,
        status=STATUSES[task.status],
        result_urls=urls,
        error_message=_failure(task),
        **outcome.additions(task, verdicts=ok),  # `nsfw`: one per URL listed
    )


def _failure(task: Task) -> str | None:
    if task.status is TaskStatus.CANCELED:
        return f"task canceled: {task.error.message}" if task.error else "task canceled"
    if task.status is TaskStatus.FAILED:
        return task.error.message if task.error else "generation failed"
    return None


def error_body(exc: QwenImageError) -> ErrorOut:
    """Pixwith's error envelope: code 0 and the message (the HTTP status is ours: 400, 404, 500...)."""
    return ErrorOut(message=exc.message)
