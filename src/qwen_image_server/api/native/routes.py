"""The native API: /v1/tasks. Thin: parse, translate, call api.tasks, translate back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

from fastapi import APIRouter, Query, Request, Response
from sse_starlette.sse import EventSourceResponse

from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import Caller, authenticate
from qwen_image_server.api.native.schemas import CallbackListOut, CreateTaskBody, TaskListOut, TaskOut
from qwen_image_server.api.native.translate import to_callback_out, to_generation_request, to_task_out
from qwen_image_server.api.spec import EVENT_STREAM
from qwen_image_server.api.tasks import (
    ResultLinks,
    next_state,
    owned_task,
    owned_task_and_position,
    requested_wait,
    task_callbacks,
    wait_for_end,
)
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope
from qwen_image_server.tasks.model import Task, TaskStatus
from qwen_image_server.tasks.store import TaskConflict

DIALECT = "native"
NATIVE_PREFIX = "/v1/tasks"


def native_router(service: Service) -> APIRouter:
    router = APIRouter(prefix=NATIVE_PREFIX, tags=["tasks"])

    async def caller_of(request: Request, scope: Scope = Scope.READ) -> Caller:
        return await authenticate(service, request, "Authorization", scope=scope)

    async def render(task: Task, request: Request) -> TaskOut:
        position = await service.store.queue_position(task.id) if task.status is TaskStatus.QUEUED else None
        return to_task_out(task, ResultLinks(service, request), position)

    @router.post("", status_code=202, response_model=TaskOut)
    async def create_task(body: CreateTaskBody, request: Request, response: Response) -> TaskOut:
        """Queue a text-to-image or edit task. With `?wait=N` or `Prefer: wait=N`, answer 200 with
        the finished task if it ends within N seconds, else 202 with its current state."""
        caller = await caller_of(request, Scope.GENERATE)
        wait = requested_wait(request, service)
        order = Order(partial(to_generation_request, body), body.images, body.callback_url, body.priority)
        task = await accept(service, request, caller, order, dialect=DIALECT)
        if wait:
            task = await wait_for_end(service, task, wait)
        response.status_code = 200 if task.status.is_terminal else 202
        response.headers["Location"] = f"/v1/tasks/{task.id}"
        return await render(task, request)

    @router.get("", response_model=TaskListOut)
    async def list_tasks(
        request: Request,
        status: TaskStatus | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        cursor: str | None = None,
    ) -> TaskListOut:
        """Tasks, newest first; pass `next_cursor` back as `cursor` for the next page."""
        caller = await caller_of(request)
        owner = None if caller.sees_all else caller.key_id
        page = await service.store.list_tasks(status=status, owner=owner, limit=limit, cursor=cursor)
        links = ResultLinks(service, request)
        return TaskListOut(data=[to_task_out(task, links) for task in page.tasks], next_cursor=page.next_cursor)

    @router.get("/{task_id}", response_model=TaskOut)
    async def get_task(task_id: str, request: Request) -> TaskOut:
        task, position = await owned_task_and_position(service, task_id, await caller_of(request))
        return to_task_out(task, ResultLinks(service, request), position)

    @router.post("/{task_id}/cancel", response_model=TaskOut)
    async def cancel_task(task_id: str, request: Request) -> TaskOut:
        """A queued task is canceled at once; a running one stops at its next step."""
        before = await owned_task(service, task_id, await caller_of(request))
        if before.status.is_terminal:
            raise TaskConflict(f"task {task_id} already {before.status}; only queued or running tasks can be canceled")
        return await render(await service.store.request_cancel(task_id), request)

    @router.get("/{task_id}/callbacks", response_model=CallbackListOut)
    async def list_task_callbacks(task_id: str, request: Request) -> CallbackListOut:
        """The task's callback and every delivery attempt (empty until the task ends, or when it has
        no callback URL)."""
        found = await task_callbacks(service, task_id, await caller_of(request))
        return CallbackListOut(data=[to_callback_out(callback) for callback in found])

    @router.get("/{task_id}/events", response_class=EventSourceResponse, responses=EVENT_STREAM)
    async def task_events(task_id: str, request: Request) -> EventSourceResponse:
        """Server-Sent Events: `queued` (with queue position), `progress` per step, `preview` for each
        partial image (with `partial_images`), then the final state (`succeeded`, `failed` or
        `canceled`) with the whole task; then the stream ends."""
        first = await owned_task(service, task_id, await caller_of(request))
        return EventSourceResponse(_events(service, first, request), ping=15)

    return router


async def _events(service: Service, task: Task, request: Request) -> AsyncIterator[dict[str, str]]:
    links = ResultLinks(service, request)
    last: tuple[object, ...] | None = None
    previews_sent = 0
    while True:
        for preview in to_task_out(task, links).previews[previews_sent:]:
            yield {"event": "preview", "data": preview.model_dump_json()}
        previews_sent = len(task.previews)
        position = await service.store.queue_position(task.id) if task.status is TaskStatus.QUEUED else None
        state = (task.status, position, task.progress.step)
        if state != last:
            last = state
            yield _event(task, links, position)
        if task.status.is_terminal or await request.is_disconnected():
            return
        task = await next_state(service, task)


def _event(task: Task, links: ResultLinks, position: int | None) -> dict[str, str]:
    if task.status.is_terminal:
        return {"event": task.status.value, "data": to_task_out(task, links).model_dump_json()}
    if task.status is TaskStatus.QUEUED:
        return {"event": "queued", "data": json.dumps({"id": task.id, "status": "queued", "queue_position": position})}
    progress = {"step": task.progress.step, "total": task.progress.total, "percent": task.progress.percent}
    return {"event": "progress", "data": json.dumps({"id": task.id, "status": "running", "progress": progress})}
