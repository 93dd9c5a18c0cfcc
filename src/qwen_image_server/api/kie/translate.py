"""Pure translation between the kie.ai jobs API and the internal request and task.

Also the pure halves of callbacks: the body the provider POSTs to `callBackUrl` and its optional
signature headers. Delivery (outbox, retries) is not built yet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime
from typing import Any

from qwen_image_server.api import outcome
from qwen_image_server.api.kie.schemas import MAX_EDIT_PROMPT_CHARS, CreateTaskBody, KieLora, KieState, RecordData
from qwen_image_server.domain import MAX_SEQUENCE_LENGTH_CAP, GenerationRequest, ModelName, PipelineMode, Size
from qwen_image_server.errors import InvalidParameter, QwenImageError, caller_fault_of
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.safe_fetch import HTTP_URL_PATTERN
from qwen_image_server.tasks.model import Task, TaskStatus

DIALECT_NAME = "kie"

KIE_MODELS: dict[str, ModelName] = {
    "qwen/text-to-image": ModelName.QWEN_IMAGE,
    "qwen/image-to-image": ModelName.QWEN_IMAGE,  # with its one input image: image-to-image
    "qwen/image-edit": ModelName.QWEN_IMAGE_EDIT,
}

# The provider serves Qwen-Image through fal, whose presets these are (not Qwen's native 1328 sizes).
IMAGE_SIZES: dict[str, Size] = {
    "square": Size(512, 512),
    "square_hd": Size(1024, 1024),
    "portrait_4_3": Size(768, 1024),
    "portrait_16_9": Size(576, 1024),
    "landscape_4_3": Size(1024, 768),
    "landscape_16_9": Size(1024, 576),
}
_PRESET_NAMES = {size: name for name, size in IMAGE_SIZES.items()}
DEFAULT_IMAGE_SIZE = "square_hd"
DEFAULT_GUIDANCE = {"qwen/text-to-image": 2.5, "qwen/image-to-image": 2.5, "qwen/image-edit": 4.0}

_STATES: dict[TaskStatus, KieState] = {
    TaskStatus.QUEUED: "waiting",
    TaskStatus.RUNNING: "generating",
    TaskStatus.SUCCEEDED: "success",
    TaskStatus.FAILED: "fail",
    TaskStatus.CANCELED: "fail",
}

CALLBACK_OK = "Playground task completed successfully."
CALLBACK_FAILED = "Playground task failed."


def input_image_refs(body: CreateTaskBody) -> list[str]:
    """The input images to fetch, after the checks that need no download."""
    prompt, url, model = body.input.prompt, body.input.image_url, body.model
    if body.input.strength is not None and model != "qwen/image-to-image":
        raise InvalidParameter("input.strength is only for qwen/image-to-image", param="input.strength")
    if model == "qwen/text-to-image":
        if url is not None:
            raise InvalidParameter(
                "input.image_url is not for qwen/text-to-image; use qwen/image-to-image or qwen/image-edit",
                param="input.image_url",
            )
        return []
    if url is None:
        raise InvalidParameter(f"input.image_url is required for {model}", param="input.image_url")
    if model == "qwen/image-edit" and len(prompt) > MAX_EDIT_PROMPT_CHARS:
        raise InvalidParameter(
            f"input.prompt is at most {MAX_EDIT_PROMPT_CHARS} characters for qwen/image-edit, got {len(prompt)}",
            param="input.prompt",
        )
    return [url]


def to_generation_request(body: CreateTaskBody, images: tuple[bytes, ...]) -> GenerationRequest:
    fields = body.input
    preset = fields.image_size or (DEFAULT_IMAGE_SIZE if body.model == "qwen/text-to-image" else None)
    size = IMAGE_SIZES[preset] if preset else None  # none: the input image's aspect ratio at about 1 MP
    guidance = fields.guidance_scale if fields.guidance_scale is not None else DEFAULT_GUIDANCE[body.model]
    return GenerationRequest.create(
        model=KIE_MODELS[body.model],
        prompt=fields.prompt,
        negative_prompt=fields.negative_prompt,
        width=size.width if size else None,
        height=size.height if size else None,
        num_inference_steps=fields.num_inference_steps,
        # Qwen-Image is not guidance-distilled: the provider's "CFG scale" is diffusers' true_cfg_scale.
        true_cfg_scale=guidance,
        seed=fields.seed,
        output_format=fields.output_format,
        # The provider takes prompts of up to 5000 characters; let the tokenizer limit be the widest.
        max_sequence_length=MAX_SEQUENCE_LENGTH_CAP,
        acceleration=fields.acceleration,
        loras=tuple(_lora_choice(lora) for lora in fields.loras or ()),
        safety_check=fields.enable_safety_checker is not False,
        images=images,
        strength=fields.strength,
    )


def _lora_choice(lora: KieLora) -> dict[str, Any]:
    """fal's `{path, scale}`: a URL to download, or the name of an adapter the server offers."""
    if re.match(HTTP_URL_PATTERN, lora.path):
        return {"path": lora.path, "scale": lora.scale}
    return {"name": lora.path, "scale": lora.scale}


def model_name(task: Task) -> str:
    """The provider's name for the task's model (ours for a model it does not have)."""
    if task.model is ModelName.QWEN_IMAGE:
        return "qwen/image-to-image" if task.request.input_image_count else "qwen/text-to-image"
    return "qwen/image-edit" if task.model is ModelName.QWEN_IMAGE_EDIT else task.model.value


def param_json(task: Task) -> str:
    """The create request as the provider echoes it, rebuilt from the stored request. What the task
    does not keep is left out: `image_url` (the image is stored, not its URL). `seed` is the one used,
    also when the caller gave none."""
    request = task.request
    size = Size(request.width, request.height)
    inputs: dict[str, Any] = {
        "prompt": request.prompt,
        "image_size": _PRESET_NAMES.get(size) or {"width": size.width, "height": size.height},
        "num_inference_steps": request.num_inference_steps,
        "seed": request.seed,
        "guidance_scale": request.true_cfg_scale,
        "output_format": request.output_format.value,
        "acceleration": request.acceleration.value,
        "enable_safety_checker": request.safety_check,
    }
    if request.strength is not None and request.pipeline_mode is PipelineMode.IMAGE_TO_IMAGE:
        inputs["strength"] = request.strength
    if request.loras:
        inputs["loras"] = [{"path": lora.source, "scale": lora.scale} for lora in request.loras]
    if request.negative_prompt is not None:
        inputs["negative_prompt"] = request.negative_prompt
    body: dict[str, Any] = {"model": model_name(task)}
    if task.callback_url:
        body["callBackUrl"] = task.callback_url
    body["input"] = inputs
    return _compact(body)


def result_json(task: Task, link: ResultLinker) -> str | None:
    if task.status is not TaskStatus.SUCCEEDED:
        return None
    result: dict[str, Any] = {"resultUrls": [link(image, task)[0] for image in task.results]}
    flags = outcome.nsfw_flags(task)
    if flags is not None:  # fal's field, one per URL in `resultUrls`
        result["has_nsfw_concepts"] = flags
    return _compact({**result, **outcome.extra_fields(task)})


def record_data(task: Task, link: ResultLinker) -> RecordData:
    """`data` of recordInfo. costTime is the generation time in milliseconds, as the query page says."""
    failed = task.error is not None or task.status is TaskStatus.CANCELED
    return RecordData(
        taskId=task.id,
        model=model_name(task),
        state=_STATES[task.status],
        param=param_json(task),
        resultJson=result_json(task, link),
        failCode=fail_code(task) if failed else "",
        failMsg=fail_message(task) if failed else "",
        costTime=round(_cost_seconds(task) * 1000),
        completeTime=_millis(task.finished_at) if task.finished_at else None,
        createTime=_millis(task.created_at),
        updateTime=_millis(task.updated_at),
    )


def callback_payload(task: Task, link: ResultLinker) -> dict[str, Any]:
    """The body POSTed to `callBackUrl` when a task ends. Unlike recordInfo, the provider's callback
    gives costTime in seconds, resultJson only on success and failCode/failMsg only on failure."""
    if not task.status.is_terminal:
        raise ValueError(f"task {task.id} is {task.status}; callbacks are sent only when a task ends")
    ok = task.status is TaskStatus.SUCCEEDED
    data = {
        "taskId": task.id,
        "model": model_name(task),
        "state": _STATES[task.status],
        "param": param_json(task),
        "resultJson": result_json(task, link),
        "failCode": None if ok else fail_code(task),
        "failMsg": None if ok else fail_message(task),
        "costTime": round(_cost_seconds(task)),
        "completeTime": _millis(task.finished_at) if task.finished_at else None,
        "createTime": _millis(task.created_at),
        "updateTime": _millis(task.updated_at),
    }
    return {"code": 200 if ok else 501, "msg": CALLBACK_OK if ok else CALLBACK_FAILED, "data": data}


def callback_headers(task_id: str, key: str | bytes, timestamp: int) -> dict[str, str]:
    """The provider's optional callback signature: `X-Webhook-Signature` is
    base64(HMAC-SHA256(taskId + "." + timestamp, key)), `timestamp` in Unix seconds."""
    secret = key.encode() if isinstance(key, str) else key
    digest = hmac.new(secret, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return {"X-Webhook-Timestamp": str(timestamp), "X-Webhook-Signature": base64.b64encode(digest).decode()}


# The provider's envelope codes. An error maps by our HTTP status, a few by our code; what is left,
# and a failed task's error, by whether its class is the caller's fault (422) or not (500).
_CODES_BY_NAME = {"generation_failed": 501, "canceled": 501, "feature_disabled": 505, "model_unavailable": 455}
_CODES_BY_STATUS = {401: 401, 403: 401, 402: 402, 404: 404, 405: 404, 429: 429, 503: 455}


def kie_code(exc: QwenImageError) -> int:
    if exc.code in _CODES_BY_NAME:
        return _CODES_BY_NAME[exc.code]
    if exc.status in _CODES_BY_STATUS:
        return _CODES_BY_STATUS[exc.status]
    return 422 if exc.caller_fault else 500


def error_envelope(exc: QwenImageError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body). The provider answers HTTP 200 with the code in the body; only a fault of
    the server itself (code 500) also gets HTTP 500, as its documents list a 500 response."""
    code = kie_code(exc)
    return (500 if code == 500 else 200), {"code": code, "msg": exc.message, "data": None}


def fail_code(task: Task) -> str:
    """A failed task's failCode: a numeric string, as the provider gives."""
    if task.error is None:  # canceled (through the native API: the provider has no cancel)
        return "501"
    code = task.error.code
    if code in _CODES_BY_NAME:
        return str(_CODES_BY_NAME[code])
    return "422" if caller_fault_of(code) else "500"


def fail_message(task: Task) -> str:
    return task.error.message if task.error else "the task was canceled"


def _cost_seconds(task: Task) -> float:
    if task.started_at is None or task.finished_at is None:
        return 0.0
    return max((task.finished_at - task.started_at).total_seconds(), 0.0)


def _millis(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
