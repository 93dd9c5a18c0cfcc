"""Novita's Qwen-Image API: two async submit endpoints and the shared task-result query. Thin: parse,
translate, call api.tasks, translate back."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import authenticate
from qwen_image_server.api.novita.schemas import EditBody, TaskIdOut, TaskResultOut, Txt2ImgBody
from qwen_image_server.api.novita.translate import (
    DIALECT_NAME,
    edit_request,
    error_body,
    task_result,
    txt2img_request,
    webhook_url,
)
from qwen_image_server.api.tasks import ResultLinks, owned_task
from qwen_image_server.errors import QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope

PREFIX = "/v3/async"
KEY_HEADER = "Authorization"  # `Bearer <key>`


def novita_router(service: Service) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["novita"])

    @router.post("/qwen-image-txt2img", response_model=TaskIdOut)
    async def txt2img(body: Txt2ImgBody, request: Request) -> TaskIdOut:
        """Queue a text-to-image task; poll `/v3/async/task-result` with the `task_id`."""
        caller = await authenticate(service, request, KEY_HEADER)
        order = Order(lambda _no_images: txt2img_request(body), callback_url=webhook_url(body.extra))
        task = await accept(service, request, caller, order, dialect=DIALECT_NAME)
        return TaskIdOut(task_id=task.id)

    @router.post("/qwen-image-edit", response_model=TaskIdOut)
    async def edit(body: EditBody, request: Request) -> TaskIdOut:
        """Queue an edit of one image; poll `/v3/async/task-result` with the `task_id`."""
        caller = await authenticate(service, request, KEY_HEADER)
        order = Order(lambda images: edit_request(body, images[0]), [body.image], callback_url=webhook_url(body.extra))
        task = await accept(service, request, caller, order, dialect=DIALECT_NAME)
        return TaskIdOut(task_id=task.id)

    @router.get("/task-result", response_model=TaskResultOut)
    async def get_task_result(request: Request, task_id: str = Query(min_length=1)) -> TaskResultOut:
        """The task's state; once `TASK_STATUS_SUCCEED`, `images` holds the signed result URLs."""
        caller = await authenticate(service, request, KEY_HEADER, scope=Scope.READ)
        task = await owned_task(service, task_id, caller)
        return task_result(task, ResultLinks(service, request))

    return router


def render_error(exc: QwenImageError) -> Response:
    body = error_body(exc)
    return JSONResponse(body.model_dump(), status_code=body.code, headers=exc.headers)
