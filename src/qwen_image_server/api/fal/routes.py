"""fal's queue API (`/fal-ai/{app}`: submit, status, status stream, result, cancel) and its
synchronous run (`/run/fal-ai/{app}`). Thin: parse, translate, call api.tasks, translate back.

fal-client posts a queue submit and a sync run to the same path on two hosts (queue.fal.run and
fal.run) with the same headers, so one server cannot tell them apart by the request alone: the run
host is this server's `/run` path (docs/fal.md shows the client settings for both).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from qwen_image_server.api import outcome
from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import Caller, authenticate
from qwen_image_server.api.fal.schemas import (
    CancelOut,
    CommonInput,
    EditInput,
    EditPlusInput,
    ImageToImageInput,
    OutputOut,
    QueuedOut,
    StatusOut,
    TextToImageInput,
)
from qwen_image_server.api.fal.translate import (
    APP_OF_MODEL,
    DIALECT_NAME,
    FAL_APPS,
    OWNER,
    SYNC_MODE_DIALECT,
    RequestUrls,
    error_body,
    failure_of,
    fal_error_type,
    input_image_refs,
    named_as_sent,
    output_of,
    request_notes,
    status_out,
    to_generation_request,
)
from qwen_image_server.api.spec import EVENT_STREAM
from qwen_image_server.api.tasks import (
    ResultLinks,
    WaitTimedOut,
    next_state,
    owned_task_and_position,
    public_base,
    wait_attended,
)
from qwen_image_server.api.wire import HTTP_URL_SPEC_PATTERN
from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.errors import CallerError, QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope
from qwen_image_server.tasks.model import StoredImage, Task, TaskStatus
from qwen_image_server.tasks.store import TaskNotFound

QUEUE_PREFIX = f"/{OWNER}"
RUN_PREFIX = f"/run/{OWNER}"
KEY_HEADER = "Authorization"
KEY_SCHEME = "Key"  # `Authorization: Key <key>`
PRIORITY_HEADER = "X-Fal-Queue-Priority"  # normal | low
# Headers fal-client may send that mean nothing here: the answer says so (`not_applied`).
UNUSED_HEADERS = {
    "X-Fal-Request-Timeout": "not applied: a queued request waits for a worker however long it takes",
    "X-Fal-Runner-Hint": "not applied: this server has no runners to choose from",
}
_BODIES: dict[str, type[CommonInput]] = {
    "qwen-image": TextToImageInput,
    "qwen-image/image-to-image": ImageToImageInput,
    "qwen-image-edit": EditInput,
    "qwen-image-edit-plus": EditPlusInput,
}
REQUEST_PATH = QUEUE_PREFIX + "/{app}/requests/{request_id}"


class AppNotFound(CallerError):
    status = 404
    code = "app_not_found"


class RunTimedOut(QwenImageError):
    """A sync run not done within `max_wait_seconds` (its task is canceled): fal's 504
    `request_timeout`, which fal-client does not retry (a 408 it would, 10 times)."""

    status = 504
    code = "run_timed_out"


class StillInProgress(CallerError):
    """The result of a request that has not ended (fal answers 400)."""

    status = 400
    code = "request_in_progress"


def fal_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["fal"])

    async def caller_of(request: Request, scope: Scope = Scope.GENERATE) -> Caller:
        return await authenticate(service, request, KEY_HEADER, scheme=KEY_SCHEME, scope=scope)

    async def create(
        model: ModelName, body: CommonInput, request: Request, caller: Caller, callback_url: str | None = None
    ) -> Task:
        if model not in service.settings.models:
            raise AppNotFound(f"{OWNER}/{APP_OF_MODEL[model]} is not served here")
        low = request.headers.get(PRIORITY_HEADER, "").strip().lower() == "low"
        can_accelerate = not service.settings.compile
        # What is not applied goes with the stored request: the submit answer, the status, the result
        # and the webhook all read it from the task (outcome.not_applied).
        notes = {**unused_headers(request), **request_notes(model, body, can_accelerate=can_accelerate)}

        def build(images: tuple[bytes, ...]) -> GenerationRequest:
            translated = to_generation_request(model, body, images, can_accelerate=can_accelerate)
            return translated.with_not_applied(notes)

        order = Order(
            build,
            input_image_refs(body),
            callback_url=callback_url,
            priority=-1 if low else 0,
        )
        dialect = SYNC_MODE_DIALECT if body.sync_mode else DIALECT_NAME
        try:
            return await accept(service, request, caller, order, dialect=dialect)
        except QwenImageError as exc:
            named_as_sent(exc, body)
            raise

    def submit_route(model: ModelName, body_type: type[CommonInput]) -> Callable[..., object]:
        async def submit(
            body: body_type,  # type: ignore[valid-type]
            request: Request,
            fal_webhook: str | None = Query(
                default=None,
                description="POSTed fal's webhook body when it ends.",
                json_schema_extra={"pattern": HTTP_URL_SPEC_PATTERN},  # within what check_url takes
            ),
        ) -> QueuedOut:
            caller = await caller_of(request)
            task = await create(model, body, request, caller, callback_url=fal_webhook)
            urls = RequestUrls.of(public_base(service, request), task)
            position = await service.store.queue_position(task.id)
            return QueuedOut(
                request_id=task.id,
                response_url=urls.response_url,
                status_url=urls.status_url,
                cancel_url=urls.cancel_url,
                queue_position=position or 0,
                not_applied=outcome.not_applied(task),
            )

        submit.__annotations__["body"] = body_type  # the class itself: FastAPI cannot resolve a closure's name
        return submit

    def run_route(model: ModelName, body_type: type[CommonInput]) -> Callable[..., object]:
        async def run(body: body_type, request: Request) -> OutputOut:  # type: ignore[valid-type]
            task = await create(model, body, request, await caller_of(request))
            limit = service.settings.max_wait_seconds
            try:
                task = await wait_attended(service, task, request, limit)
            except WaitTimedOut:
                late = f"the output was not ready within {limit:g} seconds; the request was canceled"
                raise RunTimedOut(late) from None
            return await output(task, request)

        run.__annotations__["body"] = body_type
        return run

    for app, model in FAL_APPS.items():
        body_type = _BODIES[app]
        router.add_api_route(
            f"{QUEUE_PREFIX}/{app}",
            submit_route(model, body_type),
            methods=["POST"],
            response_model=QueuedOut,
            response_model_exclude_none=True,
            summary=f"Queue a {OWNER}/{app} request",
            operation_id=f"fal_submit_{app.replace('-', '_').replace('/', '_')}",
        )
        router.add_api_route(
            f"{RUN_PREFIX}/{app}",
            run_route(model, body_type),
            methods=["POST"],
            response_model=OutputOut,
            response_model_exclude_none=True,
            summary=f"Run {OWNER}/{app} and wait for the output (fal-client's run host)",
            operation_id=f"fal_run_{app.replace('-', '_').replace('/', '_')}",
        )

    async def visible(app: str, request_id: str, request: Request, scope: Scope) -> tuple[Task, int | None]:
        if app not in FAL_APPS:
            raise AppNotFound(f"{OWNER}/{app} is not an app of this server")
        return await owned_task_and_position(service, request_id, await caller_of(request, scope))

    @router.get(REQUEST_PATH + "/status", response_model=StatusOut, response_model_exclude_none=True)
    async def request_status(
        app: str, request_id: str, request: Request, logs: str | None = Query(default=None, description="1 or true")
    ) -> JSONResponse:
        """IN_QUEUE (with `queue_position`), IN_PROGRESS, or COMPLETED (with `metrics`, and `error` and
        `error_type` when it failed or was canceled)."""
        task, position = await visible(app, request_id, request, Scope.READ)
        return JSONResponse(status_body(task, position, request, with_logs=_truthy(logs)))

    def status_body(task: Task, position: int | None, request: Request, *, with_logs: bool) -> dict[str, Any]:
        out = status_out(task, position, RequestUrls.of(public_base(service, request), task), with_logs=with_logs)
        body = out.model_dump(exclude_none=True)
        if out.status != "IN_QUEUE":
            body["logs"] = body.get("logs")  # fal-client needs the key, null or not
        return body

    @router.get(REQUEST_PATH + "/status/stream", response_class=EventSourceResponse, responses=EVENT_STREAM)
    async def request_status_stream(
        app: str, request_id: str, request: Request, logs: str | None = Query(default=None)
    ) -> EventSourceResponse:
        """Server-Sent Events: the status (as the status call gives it) at each change, until COMPLETED."""
        task, _ = await visible(app, request_id, request, Scope.READ)

        async def events(task: Task) -> AsyncIterator[dict[str, str]]:
            last = None
            while True:
                position = await service.store.queue_position(task.id) if task.status is TaskStatus.QUEUED else None
                current = json.dumps(status_body(task, position, request, with_logs=_truthy(logs)))
                if current != last:
                    yield {"data": current}
                    last = current
                if task.status.is_terminal or await request.is_disconnected():
                    return
                task = await next_state(service, task)

        return EventSourceResponse(events(task), ping=15)

    @router.get(REQUEST_PATH, response_model=OutputOut, response_model_exclude_none=True)
    async def request_result(app: str, request_id: str, request: Request) -> OutputOut:
        """The model output once COMPLETED; a failed request's error in fal's error shape (422 with
        `detail` for input the model refused, else `{detail, error_type}`)."""
        task, _ = await visible(app, request_id, request, Scope.READ)
        if not task.status.is_terminal:
            raise StillInProgress("Request is still in progress")
        return await output(task, request)

    @router.put(REQUEST_PATH + "/cancel", response_model=CancelOut, status_code=202)
    async def cancel_request(app: str, request_id: str, request: Request) -> JSONResponse:
        """202 CANCELLATION_REQUESTED (a queued request ends at once, a running one at its next step);
        400 ALREADY_COMPLETED; 404 NOT_FOUND."""
        try:
            task, _ = await visible(app, request_id, request, Scope.GENERATE)
        except TaskNotFound:
            return JSONResponse(CancelOut(status="NOT_FOUND").model_dump(), status_code=404)
        if task.status.is_terminal:
            return JSONResponse(CancelOut(status="ALREADY_COMPLETED").model_dump(), status_code=400)
        await service.store.request_cancel(task.id)
        return JSONResponse(CancelOut(status="CANCELLATION_REQUESTED").model_dump(), status_code=202)

    async def output(task: Task, request: Request) -> OutputOut:
        """A finished task's output; a failed or canceled one raises its error."""
        if task.status is not TaskStatus.SUCCEEDED:
            raise failure_of(task)
        if task.dialect == SYNC_MODE_DIALECT:
            data = {image.key: await service.results.read(image.key) for image in task.results}
            return output_of(task, lambda image: _data_uri(image, data[image.key]))
        links = ResultLinks(service, request)
        return output_of(task, lambda image: links(image, task)[0])

    return router


def _truthy(value: str | None) -> bool:
    """fal-client sends `logs=true|false`, fal's REST docs `logs=1`."""
    return (value or "").strip().lower() in ("1", "true", "yes")


def _data_uri(image: StoredImage, data: bytes) -> str:
    return f"data:{image.content_type};base64,{base64.b64encode(data).decode()}"


def render_error(exc: QwenImageError) -> Response:
    status, body = error_body(exc)
    headers = dict(exc.headers or {})
    error_type = fal_error_type(exc)
    if error_type is not None:
        headers["X-Fal-Error-Type"] = error_type
    return JSONResponse(body, status_code=status, headers=headers)


def unused_headers(request: Request) -> dict[str, str]:
    """fal's headers that the request sent and this server does not use, with why."""
    return {name: why for name, why in UNUSED_HEADERS.items() if name in request.headers}
