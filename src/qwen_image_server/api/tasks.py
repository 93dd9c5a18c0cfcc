"""What every dialect does with tasks, in one place: fetch input images, submit, wait, link results.

Dialects translate their wire shapes to a `GenerationRequest` and back; these functions are the
only way they reach the task store and the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

from fastapi import Request

from qwen_image_server.api.dialect import Caller
from qwen_image_server.domain import MAX_INPUT_IMAGES, GenerationRequest
from qwen_image_server.engine.acceleration import plan_for
from qwen_image_server.engine.loras import check_request_loras
from qwen_image_server.errors import InvalidParameter, QueueFull, QwenImageError, RateLimited
from qwen_image_server.results.links import result_linker
from qwen_image_server.safe_fetch import IPNetwork, check_url
from qwen_image_server.service import Service
from qwen_image_server.sources import read_remote_image
from qwen_image_server.tasks.model import Idempotency, NewTask, StoredImage, Task, TaskStatus, utcnow
from qwen_image_server.tasks.outbox import Callback
from qwen_image_server.tasks.store import TaskConflict, TaskNotFound


async def fetch_input_images(refs: Sequence[str], *, allowed_networks: Sequence[IPNetwork]) -> tuple[bytes, ...]:
    """Download or decode the caller's input images (URLs are fetched concurrently, off the loop).
    URLs may reach only public addresses and `allowed_networks` (the setting `allowed_fetch_networks`)."""
    if len(refs) > MAX_INPUT_IMAGES:
        raise InvalidParameter(f"at most {MAX_INPUT_IMAGES} input images, got {len(refs)}", param="images")
    return tuple(
        await asyncio.gather(
            *(
                asyncio.to_thread(read_remote_image, ref, index=i, allowed_networks=allowed_networks)
                for i, ref in enumerate(refs)
            )
        )
    )


async def submit(
    service: Service,
    request: GenerationRequest,
    *,
    dialect: str,
    owner: str | None = None,
    callback_url: str | None = None,
    priority: int = 0,
    idempotency: Idempotency | None = None,
) -> Task:
    """Queue `request` after the checks that need the model; the in-process worker is woken."""
    served = service.settings.models
    if request.model not in served:
        names = ", ".join(model.value for model in served)
        raise InvalidParameter(f"model {request.model} is not served here; this server serves {names}", param="model")
    plan_for(request, service.settings)  # a level this server cannot run is refused now, in the dialect's shape
    check_request_loras(request, service.settings)  # so are adapters it does not offer
    if callback_url is not None:
        check_url(callback_url)  # a mistyped URL is refused now, not found out by a failed delivery
    if idempotency is not None and (earlier := await service.store.replay(owner, idempotency)) is not None:
        return earlier  # a replay creates nothing, so the limits on new tasks do not apply
    await check_limits(service, owner)
    engine = service.engine
    if engine is not None and engine.is_loaded(request.model):
        engine.validate(request)  # else the worker checks it and fails the task with the same error
    new = NewTask(
        request=request,
        dialect=dialect,
        owner=owner,
        priority=priority,
        callback_url=callback_url,
        max_attempts=service.settings.max_attempts,
        idempotency=idempotency,
    )
    task = await service.store.create(new)
    service.wake_worker()
    return task


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


async def check_limits(service: Service, owner: str | None) -> None:
    """The configured limits, counted in the task database so they hold across API processes."""
    settings, store = service.settings, service.store
    active = (TaskStatus.QUEUED, TaskStatus.RUNNING)
    if settings.max_queue_depth is not None:
        queued = await store.count_tasks(statuses=(TaskStatus.QUEUED,))
        if queued >= settings.max_queue_depth:
            raise QueueFull(f"the queue is full ({queued} tasks waiting); try again shortly", retry_after=10)
    if settings.active_tasks_per_key is not None and owner is not None:
        running = await store.count_tasks(owner=owner, statuses=active)
        if running >= settings.active_tasks_per_key:
            raise RateLimited(
                f"this key has {running} unfinished tasks; the limit is {settings.active_tasks_per_key}",
                retry_after=5,
            )
    if settings.tasks_per_minute is not None:
        since = utcnow() - timedelta(minutes=1)
        made = await store.count_tasks(owner=owner, created_since=since)
        if made >= settings.tasks_per_minute:
            raise RateLimited(
                f"{made} tasks in the last minute; the limit is {settings.tasks_per_minute} per minute",
                retry_after=15,
            )


LIST_PAGE = 100  # tasks read from the store at a time by `newest_tasks`
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


async def idempotency_of(request: Request, *parts: bytes) -> Idempotency | None:
    """The request's `Idempotency-Key` with a fingerprint of what it asks: the raw body, or `parts`
    when the body was streamed (multipart uploads). None without the header."""
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidParameter(f"the {IDEMPOTENCY_HEADER} is longer than {MAX_IDEMPOTENCY_KEY} characters")
    digest = hashlib.sha256(request.url.path.encode())
    for part in parts or (await request.body(),):
        digest.update(hashlib.sha256(part).digest())
    return Idempotency(key, digest.hexdigest())


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


class WaitTimedOut(QwenImageError):
    status = 408
    code = "request_timeout"


class ClientGone(QwenImageError):
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


class ResultLinks:
    """Result links for an API answer: signed ones under `public_url`, else under the URL the client
    used; or presigned URLs of the store (setting `results_links`)."""

    def __init__(self, service: Service, request: Request) -> None:
        base = service.settings.public_url or str(request.base_url)
        self._link = result_linker(service.signer, service.presigner, base)

    def __call__(self, image: StoredImage, task: Task) -> tuple[str, datetime]:
        return self._link(image, task)
