"""DashScope's image routes, and Pixazo's, which wraps the synchronous one. Thin: parse, translate,
call api.tasks, translate back; errors are raised and rendered by api/dashscope/errors.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request

from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dashscope.errors import (
    ACCESS_DENIED,
    INTERNAL_ERROR,
    MODEL_NOT_FOUND,
    NOT_FOUND,
    REQUEST_TIMEOUT,
    UNSUPPORTED_OPERATION,
    DashScopeError,
    new_request_id,
    task_error_code,
    task_error_status,
)
from qwen_image_server.api.dashscope.listing import list_tasks as list_matching
from qwen_image_server.api.dashscope.listing import task_query
from qwen_image_server.api.dashscope.schemas import (
    CancelResponse,
    MultimodalBody,
    MultimodalResponse,
    SynthesisBody,
    TaskListResponse,
    TaskResponse,
)
from qwen_image_server.api.dashscope.translate import (
    Ask,
    created_task_response,
    multimodal_ask,
    synthesis_ask,
    to_generation_request,
    to_multimodal_response,
    to_task_response,
    unknown_task_response,
)
from qwen_image_server.api.dialect import Caller, authenticate
from qwen_image_server.api.tasks import (
    ClientGone,
    ResultLinks,
    WaitTimedOut,
    newest_tasks,
    owned_task,
    wait_attended,
)
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope
from qwen_image_server.tasks.model import Task, TaskStatus
from qwen_image_server.tasks.store import TaskNotFound

DIALECT = "dashscope"
MULTIMODAL_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
SYNTHESIS_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
PIXAZO_PATH = "/qwen-image/v1/generateMultimodeTextToImageRequest"


async def _sync_only(x_dashscope_async: str | None = Header(default=None, include_in_schema=False)) -> None:
    if (x_dashscope_async or "").strip().lower() == "enable":
        raise DashScopeError(403, ACCESS_DENIED, "current user api does not support asynchronous calls")


async def _async_only(
    x_dashscope_async: str | None = Header(default=None, description="Must be `enable`."),
) -> None:
    if (x_dashscope_async or "").strip().lower() != "enable":
        raise DashScopeError(403, ACCESS_DENIED, "current user api does not support synchronous calls")


def dashscope_router(service: Service) -> APIRouter:
    router = APIRouter()

    async def caller_of(request: Request, scope: Scope = Scope.GENERATE) -> Caller:
        if request.url.path == PIXAZO_PATH:
            return await authenticate(service, request, "Ocp-Apim-Subscription-Key", scheme=None, scope=scope)
        return await authenticate(service, request, "Authorization", scope=scope)

    async def create(ask: Ask, caller: Caller, request: Request) -> Task:
        if ask.model not in service.settings.models:
            served = ", ".join(model.value for model in service.settings.models)
            raise DashScopeError(
                404,
                MODEL_NOT_FOUND,
                f"Model not exist: {ask.model} is not served here (served: {served}).",
                param="model",
            )
        pixazo = request.url.path == PIXAZO_PATH
        order = Order(lambda images: to_generation_request(ask, images, watermark_default=pixazo), ask.image_refs)
        return await accept(service, request, caller, order, dialect=DIALECT)

    async def generate(body: MultimodalBody, request: Request) -> MultimodalResponse:
        """Text-to-image (`qwen-image`, `qwen-image-plus`) or editing (`qwen-image-edit`,
        `qwen-image-edit-plus`: 1-3 `{"image"}` items and one `{"text"}`), answered when the images
        are made. A call not done within `max_wait_seconds` is canceled and answered 408."""
        task = await create(multimodal_ask(body), await caller_of(request), request)
        task = await _wait(service, task, request)
        return to_multimodal_response(task, ResultLinks(service, request), new_request_id())

    for path, tag in ((MULTIMODAL_PATH, "dashscope"), (PIXAZO_PATH, "pixazo")):
        router.add_api_route(
            path,
            generate,
            methods=["POST"],
            response_model=MultimodalResponse,
            response_model_exclude_none=True,  # our additions only when there is something to say
            dependencies=[Depends(_sync_only)],
            tags=[tag],
            summary="Generate or edit images and wait for them",
        )

    @router.post(
        SYNTHESIS_PATH,
        response_model=TaskResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(_async_only)],
        tags=["dashscope"],
    )
    async def synthesize(body: SynthesisBody, request: Request) -> TaskResponse:
        """Queue a text-to-image task (header `X-DashScope-Async: enable`); poll GET /api/v1/tasks/{task_id}."""
        task = await create(synthesis_ask(body), await caller_of(request), request)
        return created_task_response(task, new_request_id())

    @router.get("/api/v1/tasks", response_model=TaskListResponse, tags=["dashscope"])
    async def list_tasks(
        request: Request,
        start_time: str | None = Query(default=None, description="YYYYMMDDhhmmss, UTC; default: end_time - 24 h."),
        end_time: str | None = Query(default=None, description="YYYYMMDDhhmmss, UTC; default: now."),
        model_name: str | None = None,
        status: str | None = Query(default=None, description="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED."),
        task_id: str | None = None,
        api_key_id: str | None = Query(default=None, description="Only the tasks of this key (an admin's filter)."),
        page_no: int = 1,
        page_size: int = Query(default=10, description="1-100."),
    ) -> TaskListResponse:
        """The caller's tasks (an admin key's or an open server's: everyone's), newest first, one page
        of those that match and their total. `region` is ignored: this server is one region."""
        caller = await caller_of(request, Scope.READ)
        query = task_query(start_time=start_time, end_time=end_time, model_name=model_name, status=status,
                           task_id=task_id, api_key_id=api_key_id, page_no=page_no, page_size=page_size)  # fmt: skip
        owner = None if caller.sees_all else caller.key_id
        newest = newest_tasks(service, owner, query.status)
        return await list_matching(newest, query, new_request_id())

    @router.get(
        "/api/v1/tasks/{task_id}", response_model=TaskResponse, response_model_exclude_none=True, tags=["dashscope"]
    )
    async def get_task(task_id: str, request: Request) -> TaskResponse:
        """The task's status and, once SUCCEEDED, its image URLs; UNKNOWN for an id not known (or deleted)."""
        caller = await caller_of(request, Scope.READ)
        try:
            task = await owned_task(service, task_id, caller)
        except TaskNotFound:
            return unknown_task_response(task_id, new_request_id())
        return to_task_response(task, ResultLinks(service, request), new_request_id())

    @router.post("/api/v1/tasks/{task_id}/cancel", response_model=CancelResponse, tags=["dashscope"])
    async def cancel_task(task_id: str, request: Request) -> CancelResponse:
        """Cancel a task that is still PENDING; any other state is answered 400 UnsupportedOperation."""
        caller = await caller_of(request, Scope.READ)
        try:
            task = await owned_task(service, task_id, caller)
        except TaskNotFound:
            raise DashScopeError(404, NOT_FOUND, f"Task not found: {task_id}.") from None
        if task.status is not TaskStatus.QUEUED:
            raise DashScopeError(
                400,
                UNSUPPORTED_OPERATION,
                "Failed to cancel the task, please confirm if the task is in PENDING status.",
            )
        await service.store.request_cancel(task_id)
        return CancelResponse(request_id=new_request_id())

    return router


async def _wait(service: Service, task: Task, request: Request) -> Task:
    """The finished task. Past `max_wait_seconds`, or when the client goes away, the task is
    canceled (nobody would get its images) and an error raised."""
    limit = service.settings.max_wait_seconds
    try:
        task = await wait_attended(service, task, request, limit)
    except WaitTimedOut:
        raise DashScopeError(
            408, REQUEST_TIMEOUT, f"Request timed out: the images were not ready within {limit:g} seconds."
        ) from None
    except ClientGone as gone:
        raise DashScopeError(499, "ClientClosedRequest", gone.message) from None
    if task.status is TaskStatus.SUCCEEDED:
        return task
    if task.status is TaskStatus.FAILED and task.error is not None:
        code = task.error.code
        raise DashScopeError(task_error_status(code), task_error_code(code), task.error.message)
    raise DashScopeError(500, INTERNAL_ERROR, f"the task ended {task.status.value} before its images were made")
