"""The OpenAI Images API: synchronous calls over our asynchronous tasks, with SSE streaming.

OpenAI answers an image request in the same HTTP call, so these routes queue a task and wait for
it (a client that hangs up cancels its task). With `stream=true` the answer is Server-Sent Events:
`*.partial_image` events as the worker decodes previews, then one `*.completed` per image.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import UploadFile

from qwen_image_server.api import outcome
from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import authenticate
from qwen_image_server.api.errors import invalid_request_from
from qwen_image_server.api.openai import translate
from qwen_image_server.api.openai.schemas import GenerationBody, ImageData, ImageOptions, ImagesResponse
from qwen_image_server.api.spec import EVENT_STREAM
from qwen_image_server.api.tasks import ResultLinks, abandon, next_state, wait_attended
from qwen_image_server.errors import ContentWithheld, InvalidRequest, QwenImageError, caller_fault_of
from qwen_image_server.service import Service
from qwen_image_server.tasks.model import Task, TaskStatus

DIALECT = "openai"
OptionsT = TypeVar("OptionsT", bound=ImageOptions)
MAX_INPUT_IMAGES = 16  # OpenAI's limit; our edit models take 1-3 and say so


class TaskFailed(QwenImageError):
    """The task behind a synchronous call ended without images: a 400 when it failed by the caller's
    fault (as its error's class says), else a 500 (a failure of ours, or a cancel from elsewhere)."""

    def __init__(self, task: Task) -> None:
        error = task.error
        code = error.code if error else task.status.value
        super().__init__(error.message if error else f"the image task was {task.status.value}")
        self.code = "moderation_blocked" if code == ContentWithheld.code else code  # OpenAI's code for it
        self.caller_fault = task.status is TaskStatus.FAILED and caller_fault_of(code)
        self.status = 400 if self.caller_fault else 500


def _edit_form_schema() -> dict[str, Any]:
    options = ImageOptions.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    files = {"image": {"type": "array", "items": binary, "minItems": 1}, "mask": binary}
    fields = {name: _not_null(field) for name, field in options["properties"].items()}
    return {"type": "object", "required": ["image", *options["required"]], "properties": {**files, **fields}}


def _not_null(field: dict[str, Any]) -> dict[str, Any]:
    """A form field is text: it cannot be JSON null (sent, it is the text "null"), so the spec leaves
    null out of each field's choices."""
    choices = [choice for choice in field.get("anyOf", []) if choice != {"type": "null"}]
    if not choices:
        return field
    rest = {key: value for key, value in field.items() if key != "anyOf"}
    return {**rest, **choices[0]} if len(choices) == 1 else {**rest, "anyOf": choices}


# The routes read their bodies themselves (to answer in OpenAI's error shape), so the spec says here
# what they take; with stream=true they answer Server-Sent Events instead of JSON.
_GENERATION_BODY = {"application/json": {"schema": GenerationBody.model_json_schema()}}
_GENERATION_SPEC: dict[str, Any] = {"requestBody": {"required": True, "content": _GENERATION_BODY}}
_EDIT_SPEC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _edit_form_schema()}}}
}


def openai_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1/images", tags=["openai"])

    @router.post("/generations", response_model=ImagesResponse, responses=EVENT_STREAM, openapi_extra=_GENERATION_SPEC)
    async def generations(request: Request) -> Response:
        """OpenAI `images.generate`: JSON body; `stream=true` answers SSE."""
        caller = await authenticate(service, request, "authorization")
        options = _validated(GenerationBody, await _json_body(request))
        model = translate.generation_model(options.model)
        order = Order(lambda _no_refs: translate.to_generation_request(options, model))
        task = await accept(service, request, caller, order, dialect=DIALECT)
        return await _answer(service, request, options, task, "image_generation")

    @router.post("/edits", response_model=ImagesResponse, responses=EVENT_STREAM, openapi_extra=_EDIT_SPEC)
    async def edits(request: Request) -> Response:
        """OpenAI `images.edit`: multipart with `image` (or `image[]`, up to 3 for us) and an optional
        `mask` (transparent = edit), which runs the inpainting pipeline."""
        caller = await authenticate(service, request, "authorization")
        options, images, mask = await _edit_form(request)
        model = translate.edit_model(options.model, len(images), mask is not None, service.settings.models)
        our_mask = translate.inpainting_mask(mask) if mask is not None else None
        # The images came in the body: nothing to fetch, and the body cannot be read again.
        order = Order(
            lambda _no_refs: translate.to_generation_request(options, model, images, our_mask),
            fingerprint=(options.model_dump_json().encode(), *images, mask or b""),
        )
        task = await accept(service, request, caller, order, dialect=DIALECT)
        return await _answer(service, request, options, task, "image_edit")

    return router


def _validated(schema: type[OptionsT], fields: dict[str, Any]) -> OptionsT:
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise invalid_request_from(exc.errors()) from None


async def _json_body(request: Request) -> dict[str, Any]:
    if "json" not in request.headers.get("content-type", ""):
        raise InvalidRequest("send the request body as JSON (Content-Type: application/json)")
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


async def _edit_form(request: Request) -> tuple[ImageOptions, tuple[bytes, ...], bytes | None]:
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise InvalidRequest("send edits as multipart/form-data with the image files", param="image")
    async with request.form() as form:  # closes the uploaded files' spool files afterwards
        files = [item for item in [*form.getlist("image"), *form.getlist("image[]")] if isinstance(item, UploadFile)]
        if not files:
            raise InvalidRequest("image is required: attach one to three image files", param="image")
        if len(files) > MAX_INPUT_IMAGES:
            raise InvalidRequest(f"at most {MAX_INPUT_IMAGES} images", param="image")
        # A form has no null: clients that build it from a dict send None as an empty field.
        fields = {key: value for key, value in form.items() if _is_given(key, value) and key != "mask"}
        options = _validated(ImageOptions, fields)
        images = tuple([await file.read() for file in files])
        mask_file = form.get("mask")
        mask = await mask_file.read() if isinstance(mask_file, UploadFile) else None
    return options, images, mask


def _is_given(key: str, value: object) -> bool:
    """A text field with a value; an empty prompt stays, to be answered "prompt: too short"."""
    return isinstance(value, str) and (value != "" or key == "prompt")


async def _answer(service: Service, request: Request, options: ImageOptions, task: Task, kind: str) -> Response:
    if options.stream:
        return EventSourceResponse(_stream(service, request, task, options, kind), ping=15)
    task = await _until_done(service, request, task)
    data = [await _image_data(service, request, task, index, options) for index in range(len(task.results))]
    body = ImagesResponse(
        created=int(task.created_at.timestamp()),
        data=data,
        background="opaque",
        output_format=task.request.output_format.value,
        quality=translate.quality_of(options),
        size=translate.size_of(task),
        usage=translate.usage(task),
        **outcome.additions(task),
    )
    return JSONResponse(body.model_dump(exclude_none=True))


async def _until_done(service: Service, request: Request, task: Task) -> Task:
    """Wait for the task's end (up to `max_wait_seconds`; a client that hangs up cancels it);
    raise if it made no images."""
    task = await wait_attended(service, task, request, service.settings.max_wait_seconds)
    if task.status is not TaskStatus.SUCCEEDED:
        raise TaskFailed(task)
    return task


async def _image_data(service: Service, request: Request, task: Task, index: int, options: ImageOptions) -> ImageData:
    image = task.results[index]
    if options.response_format == "b64_json":
        return ImageData(b64_json=translate.b64(await service.results.read(image.key)))
    url, _expires = ResultLinks(service, request)(image, task)
    return ImageData(url=url)


async def _stream(
    service: Service, request: Request, task: Task, options: ImageOptions, kind: str
) -> AsyncIterator[dict[str, str]]:
    sent_previews = 0
    while True:
        for preview in task.previews[sent_previews:]:
            data = translate.b64(await service.results.read(preview.key))
            fields = {"b64_json": data, "partial_image_index": preview.partial_index or 0}
            yield _event(f"{kind}.partial_image", task, options, fields)
        sent_previews = len(task.previews)
        if task.status.is_terminal or await request.is_disconnected():
            break
        task = await next_state(service, task)
    if task.status is not TaskStatus.SUCCEEDED:
        if not task.status.is_terminal:  # the client left: nobody wants the images
            await abandon(service, task)
            return
        error = TaskFailed(task)
        body = {"type": "error", "error": {"message": error.message, "type": "server_error", "code": error.code}}
        yield {"event": "error", "data": json.dumps(body)}
        return
    # Each `completed` event carries the task's additions; its own verdict is `nsfw` (a bool).
    added, flags = outcome.extra_fields(task), outcome.nsfw_flags(task)
    for position, image in enumerate(task.results):
        data = translate.b64(await service.results.read(image.key))
        usage = translate.usage(task).model_dump()
        verdict = {} if flags is None else {"nsfw": flags[position]}
        fields = {"b64_json": data, "usage": usage, **added, **verdict}
        yield _event(f"{kind}.completed", task, options, fields)


def _event(kind: str, task: Task, options: ImageOptions, fields: dict[str, Any]) -> dict[str, str]:
    body = {
        "type": kind,
        "created_at": int(task.created_at.timestamp()),
        "size": translate.size_of(task),
        "quality": translate.quality_of(options),
        "background": "opaque",
        "output_format": task.request.output_format.value,
        **fields,
    }
    return {"event": kind, "data": json.dumps(body)}
