"""Pixwith's task API: create and get. Thin: parse, translate, call api.tasks, translate back."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import authenticate
from qwen_image_server.api.pixwith.schemas import CreateBody, CreateData, CreateOut, GetBody, GetOut
from qwen_image_server.api.pixwith.translate import (
    DIALECT_NAME,
    error_body,
    estimated_time,
    task_data,
    to_generation_request,
)
from qwen_image_server.api.tasks import ResultLinks, owned_task
from qwen_image_server.errors import QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope

PREFIX = "/api/task"
KEY_HEADER = "Api-Key"  # the bare key, no scheme


def pixwith_router(service: Service) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["pixwith"])

    @router.post("/create", response_model=CreateOut)
    async def create(body: CreateBody, request: Request) -> CreateOut:
        """Queue a text-to-image task, or image-to-image with one `image_urls` entry."""
        caller = await authenticate(service, request, KEY_HEADER, scheme=None)
        order = Order(partial(to_generation_request, body), body.image_urls or [])
        task = await accept(service, request, caller, order, dialect=DIALECT_NAME)
        return CreateOut(data=CreateData(task_id=task.id, estimated_time=estimated_time(task.request)))

    @router.post("/get", response_model=GetOut, response_model_exclude_none=True)
    async def get(body: GetBody, request: Request) -> GetOut:
        """The task's status (1 processing, 2 completed, 3 failed) and, once completed, its result URLs."""
        caller = await authenticate(service, request, KEY_HEADER, scheme=None, scope=Scope.READ)
        task = await owned_task(service, body.task_id, caller)
        return GetOut(data=task_data(task, ResultLinks(service, request)))

    return router


def render_error(exc: QwenImageError) -> Response:
    body = error_body(exc)
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=exc.headers)
