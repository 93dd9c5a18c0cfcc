"""The kie.ai / Apikley jobs API: createTask and recordInfo. Thin: parse, translate, call api.tasks,
translate back. Every answer is the envelope `{code, msg, data}`."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import authenticate
from qwen_image_server.api.kie.schemas import CreateTaskBody, CreateTaskOut, ErrorOut, RecordInfoOut, TaskIdData
from qwen_image_server.api.kie.translate import (
    DIALECT_NAME,
    KIE_MODELS,
    error_envelope,
    input_image_refs,
    record_data,
    to_generation_request,
)
from qwen_image_server.api.tasks import ResultLinks, owned_task
from qwen_image_server.errors import QwenImageError
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope

PREFIX = "/api/v1/jobs"


class FeatureDisabled(QwenImageError):
    """A model the provider has, but this server was not configured to serve (code 505)."""

    status = 501
    code = "feature_disabled"


def kie_router(service: Service) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["kie"])

    # Errors are answered with HTTP 200 too (the provider's convention), so 200 documents both.
    @router.post("/createTask", response_model=CreateTaskOut | ErrorOut)
    async def create_task(body: CreateTaskBody, request: Request) -> CreateTaskOut:
        """Queue a qwen/text-to-image or qwen/image-edit task; poll recordInfo with the taskId."""
        caller = await authenticate(service, request, "Authorization")
        model = KIE_MODELS[body.model]
        if model not in service.settings.models:
            raise FeatureDisabled(f"{body.model} is not enabled on this server")
        order = Order(partial(to_generation_request, body), input_image_refs(body), callback_url=body.callBackUrl)
        task = await accept(service, request, caller, order, dialect=DIALECT_NAME)
        return CreateTaskOut(data=TaskIdData(taskId=task.id))

    @router.get("/recordInfo", response_model=RecordInfoOut | ErrorOut)
    async def record_info(request: Request, task_id: str = Query(alias="taskId", min_length=1)) -> RecordInfoOut:
        """The task's state; once `success`, `resultJson` holds the signed result URLs."""
        caller = await authenticate(service, request, "Authorization", scope=Scope.READ)
        task = await owned_task(service, task_id, caller)
        return RecordInfoOut(data=record_data(task, ResultLinks(service, request)))

    return router


def render_error(exc: QwenImageError) -> Response:
    status, body = error_envelope(exc)
    return JSONResponse(body, status_code=status, headers=exc.headers)
