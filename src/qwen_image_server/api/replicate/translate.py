"""Pure translation between Replicate's predictions API and the internal request and task: models
and versions, the input to a `GenerationRequest`, a `Task` to the prediction object (also the body
of the `completed` webhook), and errors to RFC 7807 problems."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from qwen_image_server.api import outcome
from qwen_image_server.api.replicate.schemas import (
    ErrorOut,
    InvalidField,
    PredictionInput,
    PredictionOut,
    PredictionStatus,
    WebhookEvent,
)
from qwen_image_server.domain import (
    EDIT_TARGET_AREA,
    MODEL_SPECS,
    SIZE_PRESETS,
    Acceleration,
    GenerationRequest,
    ModelName,
    Size,
    size_for_aspect,
)
from qwen_image_server.errors import InvalidParameter, QwenImageError, UnknownModel
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.safe_fetch import HTTP_URL_PATTERN
from qwen_image_server.tasks.model import Task, TaskStatus

DIALECT_NAME = "replicate"
OWNER = "qwen"
REPLICATE_MODELS: dict[str, ModelName] = {f"{OWNER}/{model.value}": model for model in ModelName}
MODEL_REFS = {model: ref for ref, model in REPLICATE_MODELS.items()}


def version_id(ref: str) -> str:
    """A model's version id: stable across server upgrades (the weights are the server's choice, not
    the caller's), 64 hex digits like Replicate's."""
    return hashlib.sha256(ref.encode()).hexdigest()


VERSION_IDS = {version_id(ref): ref for ref in REPLICATE_MODELS}
COMPLETED_ONLY: list[WebhookEvent] = ["completed"]

# Replicate's defaults where they differ from the model's own (domain.MODEL_SPECS).
DEFAULT_ASPECT_RATIO = "16:9"
DEFAULT_GUIDANCE = 3.0  # qwen/qwen-image's `guidance`; the edit models keep the model's default (4)
DEFAULT_STRENGTH = 0.9
DEFAULT_QUALITY = {ModelName.QWEN_IMAGE: 80}  # the edit models: 95
FORMATS = {"webp": "webp", "jpg": "jpeg", "png": "png"}
SPEED_AREA = EDIT_TARGET_AREA  # optimize_for_speed: about 1 MP


class UnknownVersion(InvalidParameter):
    """`version` names no model of this server (Replicate answers 422)."""

    status = 422
    code = "invalid_version"


def model_of_ref(ref: str) -> str:
    """`owner/name` of a model this server has, or `UnknownModel` (404)."""
    if ref not in REPLICATE_MODELS:
        raise UnknownModel(f"there is no model {ref!r} here; the models are {', '.join(REPLICATE_MODELS)}")
    return ref


def model_of_version(version: str) -> str:
    """The model `version` names: `qwen/qwen-image`, `qwen/qwen-image:<any version>` (the version part
    is not checked: the server runs the weights it is configured with) or a version id of ours."""
    name = version.split(":", 1)[0] if ":" in version else version
    if name in REPLICATE_MODELS:
        return name
    if version in VERSION_IDS:
        return VERSION_IDS[version]
    names = ", ".join(REPLICATE_MODELS)
    message = f"version {version!r} names no model here; use one of {names} (or its version id)"
    raise UnknownVersion(message, param="version")


def input_image_refs(ref: str, fields: PredictionInput) -> list[str]:
    """The input images to fetch, after the checks that need no download."""
    model = REPLICATE_MODELS[ref]
    refs = [] if fields.image is None else [fields.image] if isinstance(fields.image, str) else list(fields.image)
    spec = MODEL_SPECS[model]
    if model is ModelName.QWEN_IMAGE:
        if len(refs) > 1:
            raise _invalid(f"{ref} takes one image (image-to-image); use qwen/qwen-image-edit-plus for more", "image")
        if fields.strength is not None and not refs:
            raise _invalid("strength needs an image (image-to-image)", "strength")
    else:
        if fields.strength is not None:
            raise _invalid(f"strength is not an input of {ref}", "strength")
        if not spec.min_input_images <= len(refs) <= spec.max_input_images:
            wanted = "one image" if spec.max_input_images == 1 else f"1 to {spec.max_input_images} images"
            raise _invalid(f"{ref} takes {wanted} in `image`, got {len(refs)}", "image")
    if fields.aspect_ratio == "match_input_image" and not refs:
        raise _invalid("aspect_ratio match_input_image needs an image", "aspect_ratio")
    custom = fields.aspect_ratio == "custom"
    if custom != (fields.width is not None and fields.height is not None) or (
        not custom and (fields.width, fields.height) != (None, None)
    ):
        raise _invalid("width and height go together, with aspect_ratio custom", "aspect_ratio")
    if fields.lora_scale is not None and fields.lora_weights is None:
        raise _invalid("lora_scale needs lora_weights", "lora_scale")
    return refs


def to_generation_request(
    ref: str, fields: PredictionInput, images: tuple[bytes, ...], *, fast_by_default: bool
) -> GenerationRequest:
    """`fast_by_default`: what an unset `go_fast` means (false where the server cannot accelerate)."""
    model = REPLICATE_MODELS[ref]
    size = _size(fields, has_images=bool(images))
    fast = fields.go_fast if fields.go_fast is not None else fast_by_default
    guidance = fields.guidance if fields.guidance is not None else _default_guidance(model)
    quality = fields.output_quality if fields.output_quality is not None else DEFAULT_QUALITY.get(model, 95)
    strength = fields.strength if fields.strength is not None else DEFAULT_STRENGTH
    return GenerationRequest.create(
        model=model,
        prompt=fields.prompt,
        negative_prompt=fields.negative_prompt,
        width=size.width if size else None,
        height=size.height if size else None,
        num_inference_steps=fields.num_inference_steps,
        true_cfg_scale=guidance,
        seed=fields.seed,
        output_format=FORMATS[fields.output_format or "webp"],
        output_quality=max(quality, 1),  # 0 is Replicate's lowest; ours is 1
        acceleration=Acceleration.REGULAR if fast else Acceleration.NONE,
        loras=_loras(fields),
        prompt_extend=bool(fields.enhance_prompt),
        safety_check=not fields.disable_safety_checker,
        images=images,
        strength=strength if model is ModelName.QWEN_IMAGE and images else None,
    )


def _default_guidance(model: ModelName) -> float | None:
    return DEFAULT_GUIDANCE if model is ModelName.QWEN_IMAGE else None  # None: the model's own


def _size(fields: PredictionInput, *, has_images: bool) -> Size | None:
    """None: the last input image's aspect ratio at about 1 MP (the domain's default)."""
    ratio = fields.aspect_ratio or ("match_input_image" if has_images else DEFAULT_ASPECT_RATIO)
    if ratio == "custom":
        assert fields.width is not None and fields.height is not None  # input_image_refs checked
        return Size(fields.width, fields.height)
    if ratio == "match_input_image":
        return None
    trained = SIZE_PRESETS[ratio]
    if fields.image_size == "optimize_for_speed":
        return size_for_aspect(trained.width, trained.height, area=SPEED_AREA)
    return trained


def _loras(fields: PredictionInput) -> tuple[dict[str, Any], ...]:
    if fields.lora_weights is None:
        return ()
    source = "path" if re.match(HTTP_URL_PATTERN, fields.lora_weights) else "name"
    return ({source: fields.lora_weights, "scale": fields.lora_scale if fields.lora_scale is not None else 1.0},)


def named_as_sent(exc: QwenImageError) -> None:
    """Name an adapter's field in `exc` as Replicate's input names it: the domain's `loras`,
    `loras.0.name` or `loras.0.path` is the one `lora_weights`."""
    if exc.param is not None and re.fullmatch(r"loras(\.0(\.(name|path))?)?", exc.param):
        exc.param = "input.lora_weights"
        exc.message = f"input.lora_weights: {exc.message}"


def _invalid(message: str, field: str) -> InvalidParameter:
    return InvalidParameter(f"input.{field}: {message}", param=f"input.{field}")


_STATUSES: dict[TaskStatus, PredictionStatus] = {
    TaskStatus.QUEUED: "starting",
    TaskStatus.RUNNING: "processing",
    TaskStatus.SUCCEEDED: "succeeded",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELED: "canceled",
}


def to_prediction(task: Task, link: ResultLinker, base: str | None, *, just_created: bool = False) -> PredictionOut:
    """The prediction object. `base`: the server's URL for `urls` (None in webhooks, which are
    rendered away from any request). `just_created`: the answer to a create that is not finished
    says `starting` even when it runs already, as Replicate's does when `Prefer: wait` runs out
    (replicate-python's `run` polls only then: it takes `processing` for done)."""
    status = _STATUSES[task.status]
    if just_created and not task.status.is_terminal:
        status = "starting"
    ref = MODEL_REFS.get(task.model, task.model.value)
    ok = task.status is TaskStatus.SUCCEEDED
    urls = None
    if base is not None:
        get = f"{base.rstrip('/')}/v1/predictions/{task.id}"
        urls = {"get": get, "cancel": f"{get}/cancel"}
    return PredictionOut(
        id=task.id,
        model=ref,
        version=version_id(ref),
        status=status,
        input=echoed_input(task),
        output=[link(image, task)[0] for image in task.results] if ok else None,
        logs=logs(task),
        error=task.error.message if task.status is TaskStatus.FAILED and task.error else None,
        metrics=_metrics(task),
        created_at=_time(task.created_at),
        started_at=_time(task.started_at) if task.started_at else None,
        completed_at=_time(task.finished_at) if task.finished_at else None,
        urls=urls,
        webhook=task.callback_url,
        webhook_events_filter=COMPLETED_ONLY if task.callback_url else None,
        **outcome.additions(task, verdicts=ok),  # `nsfw`: one per URL listed
    )


def echoed_input(task: Task) -> dict[str, Any]:
    """The input as the task keeps it: the seed used (also when none was given); the images are
    stored, not their URLs, so `image` is left out."""
    request = task.request
    echoed: dict[str, Any] = {
        "prompt": request.prompt,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "go_fast": request.acceleration is not Acceleration.NONE,
        "guidance": request.true_cfg_scale,
        "num_inference_steps": request.num_inference_steps,
        "output_format": "jpg" if request.output_format.value == "jpeg" else request.output_format.value,
        "output_quality": request.output_quality,
        "enhance_prompt": request.prompt_extend,
        "disable_safety_checker": not request.safety_check,
    }
    if request.negative_prompt is not None:
        echoed["negative_prompt"] = request.negative_prompt
    if request.strength is not None:
        echoed["strength"] = request.strength
    if request.loras:
        echoed["lora_weights"] = request.loras[0].source
        echoed["lora_scale"] = request.loras[0].scale
    return echoed


def logs(task: Task) -> str:
    """What Replicate's models print: the seed, what the run did (the prompt used, each image
    flagged or withheld, each option not applied), and a tqdm-style progress line
    (replicate-python's `Prediction.progress` parses the last one)."""
    lines = [f"Using seed: {task.request.seed}"]
    report = task.report
    if report is not None and report.actual_prompt:
        lines.append(f"Enhanced prompt: {report.actual_prompt}")
    lines += outcome.report_lines(task)
    step, total = task.progress.step, task.progress.total
    if total:
        filled = round(10 * step / total)
        lines.append(f"{round(100 * step / total)}%|{'█' * filled}{' ' * (10 - filled)}| {step}/{total}")
    return "\n".join(lines) + "\n"


def _metrics(task: Task) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if task.finished_at is not None:
        if task.started_at is not None:  # GPU time: from the start of the run
            metrics["predict_time"] = max((task.finished_at - task.started_at).total_seconds(), 0.0)
        metrics["total_time"] = max((task.finished_at - task.created_at).total_seconds(), 0.0)
    return metrics


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def callback_payload(task: Task, link: ResultLinker) -> dict[str, Any]:
    """The body of the `completed` webhook: the prediction object (without `urls`)."""
    return to_prediction(task, link, None).model_dump(mode="json")


_TITLES = {
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Request entity too large",
    422: "Input validation failed",
    429: "Too many requests",
    503: "Service unavailable",
}


def problem(exc: QwenImageError) -> tuple[int, ErrorOut]:
    """(HTTP status, body). Bad input is 422, as Replicate answers it; a field's error also names
    it in `invalid_fields`."""
    status = 422 if exc.status == 400 else exc.status
    title = _TITLES.get(status) or ("Bad request" if status < 500 else "Internal server error")
    fields = None
    if status == 422 and exc.param:
        fields = [InvalidField(type=exc.code, field=exc.param, description=exc.message)]
    return status, ErrorOut(title=title, detail=exc.message, status=status, invalid_fields=fields)
