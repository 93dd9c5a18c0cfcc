"""Pure translation between DashScope's wire shapes and the internal request and task.

A request becomes an `Ask` first (model resolved, prompt and image references pulled out of the
message content, DashScope's own limits checked), so the route can fetch the input images before
the `GenerationRequest` is built from both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from qwen_image_server.api import outcome
from qwen_image_server.api.dashscope.errors import (
    DATA_INSPECTION_FAILED,
    EMPTY_INPUT,
    EMPTY_MODEL,
    INTERNAL_ERROR,
    MODEL_NOT_FOUND,
    DashScopeError,
    task_error_code,
)
from qwen_image_server.api.dashscope.schemas import (
    EDIT_NAMES,
    EDIT_PLUS_NAMES,
    MODEL_NAMES,
    TEXT_TO_IMAGE_NAMES,
    AssistantMessage,
    Choice,
    ImageContent,
    ImageCountUsage,
    MultimodalBody,
    MultimodalOutput,
    MultimodalResponse,
    MultimodalUsage,
    Parameters,
    SynthesisBody,
    TaskMetrics,
    TaskOutput,
    TaskResponse,
    TaskResult,
)
from qwen_image_server.domain import (
    MAX_SEQUENCE_LENGTH_CAP,
    MAX_SIDE,
    MIN_SIDE,
    MODEL_SPECS,
    GenerationRequest,
    ModelName,
)
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.tasks.model import Task, TaskStatus

MAX_PROMPT_CHARS = 800
MAX_NEGATIVE_PROMPT_CHARS = 500
MAX_IMAGES = 6  # `n`: DashScope's largest (qwen-image-edit-plus)
MAX_INPUT_IMAGES = 3

_DATED = re.compile(r"^(?P<name>.+)-(?P<date>\d{4}-\d{2}-\d{2})$")

TASK_STATUS = {
    TaskStatus.QUEUED: "PENDING",
    TaskStatus.RUNNING: "RUNNING",
    TaskStatus.SUCCEEDED: "SUCCEEDED",
    TaskStatus.FAILED: "FAILED",
    TaskStatus.CANCELED: "CANCELED",
}
UNKNOWN = "UNKNOWN"

_SIZE = re.compile(r"^\s*(\d+)\s*[*xX×]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Ask:
    """A DashScope request with its model resolved and its prompt and images pulled out."""

    model: ModelName
    prompt: str
    negative_prompt: str | None
    image_refs: tuple[str, ...]
    parameters: Parameters


def undated(name: str) -> str:
    """`qwen-image-plus-2026-01-09` -> `qwen-image-plus`; any other name as it is."""
    match = _DATED.match(name)
    if match is None or match["name"] not in MODEL_NAMES:
        return name
    try:
        date.fromisoformat(match["date"])
    except ValueError:
        return name
    return match["name"]


def resolve_model(name: str | None, image_count: int) -> ModelName:
    if not name:
        raise DashScopeError(400, EMPTY_MODEL, 'Required parameter "model" missing from request.', param="model")
    given, name = name, undated(name)
    if name in TEXT_TO_IMAGE_NAMES:
        return ModelName.QWEN_IMAGE
    if name in EDIT_NAMES:
        return ModelName.QWEN_IMAGE_EDIT if image_count <= 1 else ModelName.QWEN_IMAGE_EDIT_PLUS
    if name in EDIT_PLUS_NAMES:
        return ModelName.QWEN_IMAGE_EDIT_PLUS
    raise DashScopeError(
        404,
        MODEL_NOT_FOUND,
        f"Model not exist: {given!r}. Models here: {', '.join(MODEL_NAMES)}, each also as <name>-YYYY-MM-DD.",
        param="model",
    )


def _check_image_count(name: str, model: ModelName, count: int) -> None:
    if not MODEL_SPECS[model].is_edit:
        if count:
            raise InvalidParameter(
                f"{name} makes images from text and takes no input image; use qwen-image-edit or "
                "qwen-image-edit-plus to edit images",
                param="image",
            )
    elif not 1 <= count <= MAX_INPUT_IMAGES:
        raise InvalidParameter(f"{name} takes 1 to {MAX_INPUT_IMAGES} input images, got {count}", param="image")


def multimodal_ask(body: MultimodalBody) -> Ask:
    """The synchronous endpoint's body: one user message holding one text and 0-3 images."""
    if not body.model:
        resolve_model(body.model, 0)
    if body.input is None or not body.input.messages:
        raise DashScopeError(
            400, EMPTY_INPUT, "Required input parameter missing from request: input.messages.", param="input"
        )
    messages = body.input.messages
    if len(messages) != 1 or messages[0].role != "user":
        raise InvalidParameter('input.messages must hold exactly one message, with role "user"', param="messages")
    content = messages[0].content
    texts: list[str] = []
    images: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for index, item in enumerate(content):
            if (item.text is None) == (item.image is None):
                raise InvalidParameter(
                    f'content item {index + 1} must be either {{"text": ...}} or {{"image": ...}}', param="content"
                )
            if item.text is not None:
                texts.append(item.text)
            elif item.image is not None:
                images.append(item.image)
    if len(texts) != 1:
        raise InvalidParameter(f'content must hold exactly one {{"text": ...}} item, got {len(texts)}', param="text")
    model = resolve_model(body.model, len(images))
    _check_image_count(str(body.model), model, len(images))
    return Ask(model, texts[0], body.parameters.negative_prompt, tuple(images), body.parameters)


def synthesis_ask(body: SynthesisBody) -> Ask:
    """The asynchronous endpoint's body: `input.prompt` (and, our extension, `input.images`)."""
    if not body.model:
        resolve_model(body.model, 0)
    if body.input is None or body.input.prompt is None:
        raise DashScopeError(
            400, EMPTY_INPUT, "Required input parameter missing from request: input.prompt.", param="input"
        )
    images = tuple(body.input.images or ())
    model = resolve_model(body.model, len(images))
    _check_image_count(str(body.model), model, len(images))
    negative = body.input.negative_prompt
    if negative is None:
        negative = body.parameters.negative_prompt
    return Ask(model, body.input.prompt, negative, images, body.parameters)


def dashscope_size(text: str) -> tuple[int, int]:
    """`"W*H"` -> (width, height) as asked, each side MIN_SIDE to MAX_SIDE. Sides off the model's
    16-pixel grid (DashScope lists sizes such as 1472*1140) are kept: the engine generates on the grid
    and crops the centre back to this size (`domain.generation_size`)."""
    match = _SIZE.match(text)
    if match is None:
        raise InvalidParameter(f'size {text!r} is not "WIDTH*HEIGHT", e.g. "1328*1328"', param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidParameter(f"size {text!r}: each side must be {MIN_SIDE} to {MAX_SIDE} pixels", param="size")
    return width, height


def to_generation_request(ask: Ask, images: tuple[bytes, ...], *, watermark_default: bool = False) -> GenerationRequest:
    """The request; `watermark_default` is the endpoint's (Alibaba: false, Pixazo: true)."""
    parameters = ask.parameters
    if len(ask.prompt) > MAX_PROMPT_CHARS:
        raise InvalidParameter(
            f"the prompt is {len(ask.prompt)} characters long; the limit is {MAX_PROMPT_CHARS}", param="prompt"
        )
    negative = ask.negative_prompt or None
    if negative is not None and len(negative) > MAX_NEGATIVE_PROMPT_CHARS:
        raise InvalidParameter(
            f"negative_prompt is {len(negative)} characters long; the limit is {MAX_NEGATIVE_PROMPT_CHARS}",
            param="negative_prompt",
        )
    if parameters.n is not None and not 1 <= parameters.n <= MAX_IMAGES:
        raise InvalidParameter(f"n must be between 1 and {MAX_IMAGES}, got {parameters.n}", param="n")
    width, height = dashscope_size(parameters.size) if parameters.size is not None else (None, None)
    return GenerationRequest.create(
        model=ask.model,
        prompt=ask.prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        num_inference_steps=parameters.num_inference_steps,
        true_cfg_scale=parameters.true_cfg_scale,
        seed=parameters.seed,
        num_images_per_prompt=parameters.n or 1,
        # 800 characters may be more than the default 512 tokens (Chinese text); the pipelines only
        # truncate to this length, so shorter prompts give the same images as with 512.
        max_sequence_length=MAX_SEQUENCE_LENGTH_CAP,
        images=images,
        # The provider's defaults: the prompt is extended unless asked not to be.
        prompt_extend=True if parameters.prompt_extend is None else parameters.prompt_extend,
        watermark=watermark_default if parameters.watermark is None else parameters.watermark,
    )


def dashscope_time(moment: datetime | None) -> str | None:
    """DashScope's time format, `2025-01-08 16:03:59.840` (we give UTC)."""
    if moment is None:
        return None
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d}"


def _metrics(task: Task) -> TaskMetrics:
    total = task.request.num_images_per_prompt
    if task.status is TaskStatus.SUCCEEDED:
        done = len(task.results)
        return TaskMetrics(TOTAL=total, SUCCEEDED=done, FAILED=max(total - done, 0))
    if task.status is TaskStatus.FAILED:
        return TaskMetrics(TOTAL=total, SUCCEEDED=0, FAILED=total)
    return TaskMetrics(TOTAL=total, SUCCEEDED=0, FAILED=0)


def _result_indices(task: Task) -> list[int]:
    """The images `results` lists, in order: the delivered ones and the withheld ones."""
    withheld = [item.index for item in outcome.withheld(task) or []]
    return sorted({*(image.index for image in task.results), *withheld})


def _task_results(task: Task, link: ResultLinker) -> list[TaskResult]:
    prompt = task.request.prompt
    actual = task.report.actual_prompt if task.report and task.report.actual_prompt else prompt
    urls = {image.index: link(image, task)[0] for image in task.results}
    withheld = {item.index: item.reason for item in outcome.withheld(task) or []}
    return [
        TaskResult(orig_prompt=prompt, actual_prompt=actual, url=urls[index])
        if index in urls
        else TaskResult(orig_prompt=prompt, actual_prompt=actual, code=DATA_INSPECTION_FAILED, message=withheld[index])
        for index in _result_indices(task)
    ]


def _urls(task: Task, link: ResultLinker) -> list[str]:
    return [link(image, task)[0] for image in sorted(task.results, key=lambda image: image.index)]


def to_task_response(task: Task, link: ResultLinker, request_id: str) -> TaskResponse:
    """GET /api/v1/tasks/{task_id}. `actual_prompt` is the prompt the model saw (extended, or as given);
    an image the safety checker kept back is a result with DashScope's DataInspectionFailed."""
    results = usage = code = message = nsfw = None
    if task.status is TaskStatus.SUCCEEDED:
        results = _task_results(task, link)
        usage = ImageCountUsage(image_count=len(task.results))
        nsfw = outcome.nsfw_flags(task, _result_indices(task))
    elif task.status is TaskStatus.FAILED:
        code = task_error_code(task.error.code) if task.error else INTERNAL_ERROR
        message = task.error.message if task.error else "the task failed"
    output = TaskOutput(
        task_id=task.id,
        task_status=TASK_STATUS[task.status],
        submit_time=dashscope_time(task.created_at),
        scheduled_time=dashscope_time(task.started_at),
        end_time=dashscope_time(task.finished_at),
        results=results,
        task_metrics=_metrics(task),
        code=code,
        message=message,
        not_applied=outcome.not_applied(task),
        nsfw=nsfw,
    )
    return TaskResponse(request_id=request_id, output=output, usage=usage)


def unknown_task_response(task_id: str, request_id: str) -> TaskResponse:
    """What DashScope answers (200) for an id it does not know or no longer keeps."""
    return TaskResponse(request_id=request_id, output=TaskOutput(task_id=task_id, task_status=UNKNOWN))


def created_task_response(task: Task, request_id: str) -> TaskResponse:
    """The asynchronous call's answer: the task id and its status."""
    return TaskResponse(request_id=request_id, output=TaskOutput(task_id=task.id, task_status=TASK_STATUS[task.status]))


def to_multimodal_response(task: Task, link: ResultLinker, request_id: str) -> MultimodalResponse:
    """The synchronous endpoint's answer for a succeeded task: every delivered image in one choice;
    the images kept back in `withheld`, the verdicts in `nsfw`, the options not applied in `not_applied`."""
    urls: Sequence[str] = _urls(task, link)
    message = AssistantMessage(content=[ImageContent(image=url) for url in urls])
    delivered = sorted(image.index for image in task.results)
    output = MultimodalOutput(
        choices=[Choice(message=message)],
        task_metric=_metrics(task),
        not_applied=outcome.not_applied(task),
        withheld=outcome.withheld(task),
        nsfw=outcome.nsfw_flags(task, delivered),
    )
    return MultimodalResponse(
        output=output,
        usage=MultimodalUsage(width=task.request.width, height=task.request.height, image_count=len(urls)),
        request_id=request_id,
    )
