"""The one way into the service: every dialect's create call ends in `accept`.

A create route parses its wire body, translates it into an `Order` (a function that builds the
`GenerationRequest` from the input images, the references of those images, a callback URL...) and
hands it to `accept`, which does what every create does, once and in this order: read the
`Idempotency-Key`, fetch the input images, build the request, check it against what this server
serves and its limits, and queue it (or return the task an earlier call with the same key made).
The route then renders the task in its dialect's shape. Errors are raised, in the error tree of
errors.py; each dialect's renderer maps them by class.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request

from qwen_image_server.api.dialect import Caller
from qwen_image_server.domain import MAX_INPUT_IMAGES, GenerationRequest
from qwen_image_server.engine.acceleration import plan_for
from qwen_image_server.engine.loras import check_request_loras
from qwen_image_server.errors import InvalidParameter, QueueFull, RateLimited
from qwen_image_server.safe_fetch import IPNetwork, check_url
from qwen_image_server.service import Service
from qwen_image_server.sources import read_remote_image
from qwen_image_server.tasks.model import Idempotency, NewTask, Task, TaskStatus, utcnow


@dataclass(frozen=True)
class Order:
    """A create call as its dialect translated it, before its input images are fetched."""

    # The dialect's translation: the request, given the input images read from `image_refs` (in
    # that order; empty when there are none). Images uploaded in the body are the dialect's own.
    build: Callable[[tuple[bytes, ...]], GenerationRequest]
    image_refs: Sequence[str] = ()  # http(s) URLs or data: URIs, as the caller sent them
    callback_url: str | None = None  # POSTed the task when it ends, in the dialect's callback shape
    priority: int = 0  # higher runs first
    # What an Idempotency-Key guards: the raw body (empty), or these parts when the body was
    # streamed (a multipart upload) and cannot be read again.
    fingerprint: tuple[bytes, ...] = ()


async def accept(service: Service, request: Request, caller: Caller, order: Order, *, dialect: str) -> Task:
    """Queue the task `order` asks for on behalf of `caller` (owner: its key), created through
    `dialect` (the name its callbacks are rendered in); or the earlier task of the same key and
    request when the `Idempotency-Key` was seen before. Raises `CallerError`s for what the caller
    can fix (bad key header, unreadable image, a model or option not served, limits reached)."""
    idempotency = await _idempotency_of(request, *order.fingerprint)
    images = await _fetch_input_images(order.image_refs, allowed_networks=service.settings.allowed_fetch_networks)
    return await _submit(
        service,
        order.build(images),
        dialect=dialect,
        owner=caller.key_id,
        callback_url=order.callback_url,
        priority=order.priority,
        idempotency=idempotency,
    )


async def _fetch_input_images(refs: Sequence[str], *, allowed_networks: Sequence[IPNetwork]) -> tuple[bytes, ...]:
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


async def _submit(
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
    await _check_limits(service, owner)
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


async def _check_limits(service: Service, owner: str | None) -> None:
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


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


async def _idempotency_of(request: Request, *parts: bytes) -> Idempotency | None:
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
