"""What every dialect does with tasks once they exist, in one place: read, list, wait, link results.

Dialects create tasks through api/accept.py and translate tasks back to their wire shapes; these
functions and `accept` are the only way they reach the task store and the results.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import Request

from qwen_image_server.api.dialect import Caller
from qwen_image_server.errors import CallerError, InvalidParameter
from qwen_image_server.results.links import result_linker
from qwen_image_server.service import Service
from qwen_image_server.tasks.model import StoredImage, Task, TaskStatus
from qwen_image_server.tasks.outbox import Callback
from qwen_image_server.tasks.store import TaskConflict, TaskNotFound


async def newest_tasks(service: Service, owner: str | None, status: TaskStatus | None) -> AsyncIterator[Task]:
    """Every task of `owner` (None: everyone's) in `status` (None: any), newest first, read from
    the store a page at a time; stop iterating to stop reading."""
    cursor: str | None = None
    while True:
        page = await service.store.list_tasks(status=status, owner=owner, limit=LIST_PAGE, cursor=cursor)
        for task in page.tasks:
            yield task
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def owned_task(service: Service, task_id: str, caller: Caller) -> Task:
    """The task, if the caller may see it; another key's task is reported as not found."""
    return _visible(await service.store.get(task_id), caller)


async def owned_task_and_position(service: Service, task_id: str, caller: Caller) -> tuple[Task, int | None]:
    """`owned_task` and its queue position (None unless queued), in one read."""
    task, position = await service.store.get_with_position(task_id)
    return _visible(task, caller), position


def _visible(task: Task, caller: Caller) -> Task:
    if not caller.owns(task):
        raise TaskNotFound(f"there is no task {task.id!r}")
    return task


LIST_PAGE = 100  # tasks read from the store at a time by `newest_tasks`


def requested_wait(request: Request, service: Service) -> float:
    """Seconds to wait for the result: `?wait=N`, or `Prefer: wait=N` (RFC 7240), capped."""
    raw = request.query_params.get("wait")
    prefer = request.headers.get("prefer", "")
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait" and raw is None:
            raw = value.strip() or str(service.settings.max_wait_seconds)
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidParameter(f"wait must be a number of seconds, got {raw!r}", param="wait") from None
    if seconds < 0:
        raise InvalidParameter("wait must not be negative", param="wait")
    return min(seconds, service.settings.max_wait_seconds)


async def next_state(service: Service, task: Task, within: float | None = None) -> Task:
    """The task as it is after its next change in this process (the store wakes us), or after one
    `progress_interval_seconds` (or `within`, if shorter): the poll that sees other processes' changes."""
    interval = service.settings.progress_interval_seconds
    await service.store.wait_for_change(task.id, interval if within is None else min(interval, within))
    return await service.store.get(task.id)


async def wait_for_end(service: Service, task: Task, seconds: float) -> Task:
    """Follow the task until it is terminal or `seconds` pass; return its latest state."""
    deadline = time.monotonic() + seconds
    while not task.status.is_terminal and time.monotonic() < deadline:
        task = await next_state(service, task, within=max(deadline - time.monotonic(), 0))
    return task


class WaitTimedOut(CallerError):
    status = 408
    code = "request_timeout"


class ClientGone(CallerError):
    status = 499
    code = "client_closed_request"


async def wait_attended(service: Service, task: Task, request: Request, limit: float) -> Task:
    """For synchronous APIs: wait for the task's end while its client is there. Past `limit`
    seconds, or when the client hangs up, cancel the task (nobody would get its images) and raise
    `WaitTimedOut` or `ClientGone`."""
    deadline = time.monotonic() + limit
    while not task.status.is_terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            await abandon(service, task)
            raise WaitTimedOut(f"the images were not ready within {limit:g} seconds; the task was canceled")
        task = await wait_for_end(service, task, min(remaining, 1.0))
        if not task.status.is_terminal and await request.is_disconnected():
            await abandon(service, task)
            raise ClientGone("the client closed the connection; the task was canceled")
    return task


async def abandon(service: Service, task: Task) -> None:
    """Cancel a task nobody will collect (its client left or gave up); no error if it has ended."""
    with contextlib.suppress(TaskNotFound, TaskConflict):
        await service.store.request_cancel(task.id)


async def task_callbacks(service: Service, task_id: str, caller: Caller) -> list[Callback]:
    """The callback of the caller's task, with every delivery attempt (none before the task ends)."""
    task = await owned_task(service, task_id, caller)
    return await service.callbacks.for_task(task.id)


def public_base(service: Service, request: Request) -> str:
    """Where clients reach this server: `public_url` (behind a proxy), else the URL the client used."""
    return service.settings.public_url or str(request.base_url)


class ResultLinks:
    """Result links for an API answer: signed ones under `public_base`; or presigned URLs of the
    store (setting `results_links`)."""

    def __init__(self, service: Service, request: Request) -> None:
        self._link = result_linker(service.signer, service.presigner, public_base(service, request))

    def __call__(self, image: StoredImage, task: Task) -> tuple[str, datetime]:
        return self._link(image, task)
