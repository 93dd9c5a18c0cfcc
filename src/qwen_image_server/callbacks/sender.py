"""The sender: delivers the callback outbox (tasks/outbox.py), in every process that runs maintenance.

It runs continuously: whenever one of its `callback_concurrency` slots is free it claims a due
callback and starts it at once, so no attempt waits for another to end. At most
`callback_destination_concurrency` attempts go to one destination (scheme, host and port) at a
time, and only what can start now is claimed (a claim holds the row, pushing its next attempt
ahead): a slow or dead receiver fills its own slots and delays only its own callbacks. Between
claims the sender sleeps until the soonest pending callback is due (woken early when an attempt
ends), and at most `poll_interval_seconds`, to see callbacks that other processes recorded.

Each attempt renders the body from its task as it is now (in the shape of the dialect that made
the task), signs it with Standard Webhooks headers and POSTs it once through `safe_fetch.post`
(in the sender's own threads: a slow receiver never holds the threads the rest of the server
uses): the address is checked at connect time, no redirect is followed, one deadline bounds the
attempt. Every attempt is recorded. A non-2xx answer or no answer is tried again the next wait of
`callback_retry_seconds` after the attempt ENDED (after a 429 or 503 with Retry-After, not before
the time it asks for, up to an hour); when the schedule runs out the callback is `failed`.

A URL that leads to a non-public address, or answers with a redirect, is `refused` at once and
never retried. A URL that answers 410 Gone is disabled (Standard Webhooks): that callback stops,
and later callbacks to the same exact URL are `refused` without being sent.

Delivery is at least once: a sender that dies between the receiver's answer and the record sends
that callback again after the claim runs out, with the same `webhook-id` for the receiver to spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qwen_image_server import safe_fetch
from qwen_image_server.callbacks.retry_after import retry_after_seconds
from qwen_image_server.callbacks.signing import secret_key, signature_headers
from qwen_image_server.errors import FetchFailed, StoreUnavailable, UrlNotAllowed
from qwen_image_server.metrics import recorded
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.keys import SqlKeyStore
from qwen_image_server.tasks.model import Task, utcnow
from qwen_image_server.tasks.outbox import Callback, CallbackAttempt, CallbackStatus, DeliverySlots, SqlCallbackStore
from qwen_image_server.tasks.store import TaskNotFound, TaskStore

log = logging.getLogger(__name__)

RETRY_AFTER_STATUSES = frozenset({429, 503})  # answers whose Retry-After header sets the next wait
MIN_SLEEP_SECONDS = 0.01  # between claims when something is due but was not claimed (taken elsewhere)


@dataclass(frozen=True)
class CallbackShape:
    """How one dialect's callbacks look: the JSON body, and headers of the provider's own
    signature scheme if it has one (given the webhook secret's key bytes and the timestamp)."""

    payload: Callable[[Task, ResultLinker], dict[str, Any]]
    extra_headers: Callable[[Task, bytes, int], dict[str, str]] | None = None


@dataclass(frozen=True)
class _Result:
    """How one attempt went: its outcome, the receiver's HTTP status, what went wrong, and whether
    trying again cannot help (`final`)."""

    outcome: CallbackStatus
    status_code: int | None = None
    error: str | None = None
    final: bool = False
    retry_after: float | None = None  # seconds the receiver asked us to wait (429/503 Retry-After)
    gone: bool = False  # the receiver answered 410 Gone: disable the URL


@dataclass(frozen=True)
class _Message:
    body: bytes
    headers: dict[str, str]


class CallbackSender:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        callbacks: SqlCallbackStore,
        keys: SqlKeyStore,
        *,
        links: ResultLinker,
        shapes: Mapping[str, CallbackShape],
        server_secret: str,
    ) -> None:
        self._settings = settings
        self._store = store
        self._callbacks = callbacks
        self._keys = keys
        self._links = links
        self._shapes = shapes
        self._server_secret = server_secret
        self._policy = safe_fetch.FetchPolicy(
            allowed_networks=settings.allowed_fetch_networks, deadline_s=settings.callback_timeout_seconds
        )
        self._running: set[asyncio.Task[None]] = set()  # the attempts in flight
        self._slots = DeliverySlots(  # how many of them go to each destination and owner, and the caps
            per_destination=settings.callback_destination_concurrency, per_owner=settings.callback_owner_concurrency
        )
        self._wake = asyncio.Event()  # set when a slot frees
        self._pool: ThreadPoolExecutor | None = None  # the POSTs block: they run here, while `run` runs

    async def run(self) -> None:
        """Deliver until canceled (cancel the asyncio task to stop; attempts in flight stop too and
        are sent again once their claim runs out)."""
        pool = ThreadPoolExecutor(self._settings.callback_concurrency, thread_name_prefix="callbacks")
        self._pool, self._wake = pool, asyncio.Event()
        try:
            while True:
                self._wake.clear()
                try:
                    await self.start_due()
                    wait = await self._until_next_due()
                except Exception as exc:  # a failing round must not end the loop; the rows wait for the next
                    self._log_failure(exc)
                    wait = self._settings.poll_interval_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            for running in self._running:
                running.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            pool.shutdown(wait=False, cancel_futures=True)

    async def start_due(self) -> int:
        """Claim what is due and can start now, and start it. Returns how many were started."""
        free = self._settings.callback_concurrency - len(self._running)
        if free <= 0:
            return 0
        hold = self._settings.callback_timeout_seconds + 30  # outlives the attempt and its record
        due = await self._callbacks.claim_due(utcnow(), limit=free, hold_seconds=hold, slots=self._slots)
        for callback in due:
            self._start(callback)
        return len(due)

    async def _until_next_due(self) -> float:
        """Seconds to sleep: until the soonest callback this sender could start is due, at most
        `poll_interval_seconds` (callbacks recorded meanwhile, here or by other processes)."""
        poll = self._settings.poll_interval_seconds
        if len(self._running) >= self._settings.callback_concurrency:
            return poll  # an attempt that ends wakes the loop
        slots = self._slots
        soonest = await self._callbacks.next_due_at(
            exclude=slots.full_destinations(), exclude_owners=slots.full_owners()
        )
        if soonest is None:
            return poll
        return min(poll, max((soonest - utcnow()).total_seconds(), MIN_SLEEP_SECONDS))

    def _start(self, callback: Callback) -> None:
        self._slots.take(callback.destination, callback.owner)
        running = asyncio.create_task(self._attempt(callback), name=f"callback {callback.id}")
        self._running.add(running)
        running.add_done_callback(lambda done: self._finished(callback, done))

    def _finished(self, callback: Callback, done: asyncio.Task[None]) -> None:
        self._running.discard(done)
        self._slots.give_back(callback.destination, callback.owner)
        # e.g. the record failed: the callback is sent again when its claim runs out
        if not done.cancelled() and done.exception() is not None:
            self._log_failure(done.exception())
        self._wake.set()  # a slot is free

    def _log_failure(self, exc: BaseException | None) -> None:
        if isinstance(exc, StoreUnavailable):  # an outage is expected now and then: one line
            log.warning("callbacks wait: the task database is unreachable or busy: %s", exc.detail)
        else:
            log.error("callback delivery failed", exc_info=exc)

    async def _attempt(self, callback: Callback) -> None:
        started, clock = utcnow(), time.monotonic()
        number = callback.attempts_made + 1
        try:
            result = await self._send(callback)
        except Exception as exc:  # e.g. a payload that cannot be rendered: a fault of ours, not retried
            log.exception("callback %s of task %s could not be made", callback.id, callback.task_id)
            result = _Result(CallbackStatus.FAILED, error=f"the callback could not be made: {exc!r}", final=True)
        duration = time.monotonic() - clock
        ended = started + timedelta(seconds=duration)
        attempt = CallbackAttempt(
            number=number,
            started_at=started,
            duration_ms=round(duration * 1000),
            status_code=result.status_code,
            outcome=result.outcome,
            error=result.error,
        )
        if result.gone:  # first, so that no other attempt to this URL starts meanwhile
            reason = f"it answered HTTP 410 Gone to callback {callback.id} at {ended.isoformat(timespec='seconds')}"
            await self._callbacks.disable_url(callback.url, reason, ended)
        status, next_at = self._after(result, number, ended)
        await self._callbacks.record_attempt(callback, attempt, status=status, next_attempt_at=next_at)
        recorded.callback_attempted(result.outcome.value, None if status is CallbackStatus.PENDING else status.value)
        log.info("callback %s of task %s, attempt %d: %s", callback.id, callback.task_id, number, result.error or "ok")

    def _after(self, result: _Result, number: int, ended: datetime) -> tuple[CallbackStatus, datetime | None]:
        """The callback's status after attempt `number`, which ended at `ended`, and when to try
        next: the schedule's wait after the attempt's end, or longer if the receiver asked so."""
        schedule = self._settings.callback_retry_seconds
        if result.outcome is not CallbackStatus.FAILED:
            return result.outcome, None
        if result.final or number > len(schedule):
            return CallbackStatus.FAILED, None
        wait = max(schedule[number - 1], result.retry_after or 0.0)
        return CallbackStatus.PENDING, ended + timedelta(seconds=wait)

    async def _send(self, callback: Callback) -> _Result:
        disabled = await self._callbacks.disabled_reason(callback.url)
        if disabled is not None:
            return _Result(CallbackStatus.REFUSED, error=f"not sent: this URL is disabled ({disabled})")
        try:
            task = await self._store.get(callback.task_id)
        except TaskNotFound:
            return _Result(CallbackStatus.FAILED, error="the task no longer exists", final=True)
        message = await self._message(callback, task)
        post = functools.partial(safe_fetch.post, callback.url, message.body, message.headers, self._policy)
        try:
            answer = await asyncio.get_running_loop().run_in_executor(self._pool, post)
        except UrlNotAllowed as exc:
            return _Result(CallbackStatus.REFUSED, error=exc.message)
        except FetchFailed as exc:
            return _Result(CallbackStatus.FAILED, error=exc.message)
        code = answer.status_code
        if 200 <= code < 300:
            return _Result(CallbackStatus.DELIVERED, status_code=code)
        if 300 <= code < 400:  # where it leads is not checked or followed; the callback URL must be final
            where = f" to {answer.location}" if answer.location else ""
            error = f"the receiver redirected{where} (HTTP {code}); callbacks do not follow redirects"
            return _Result(CallbackStatus.REFUSED, status_code=code, error=error)
        if code == 410:  # Standard Webhooks: the endpoint is gone for good
            error = "the receiver answered HTTP 410 Gone: this URL is disabled, no more callbacks are sent to it"
            return _Result(CallbackStatus.FAILED, status_code=code, error=error, final=True, gone=True)
        wait = retry_after_seconds(answer.retry_after, utcnow()) if code in RETRY_AFTER_STATUSES else None
        asked = f", Retry-After {wait:g} s" if wait is not None else ""
        error = f"the receiver answered HTTP {code}{asked}"
        return _Result(CallbackStatus.FAILED, status_code=code, error=error, retry_after=wait)

    async def _message(self, callback: Callback, task: Task) -> _Message:
        shape = self._shapes.get(callback.dialect)
        if shape is None:
            raise ValueError(f"no callback shape for tasks of the {callback.dialect!r} API")
        body = json.dumps(shape.payload(task, self._links), separators=(",", ":")).encode()
        secret = await self._keys.webhook_secret(callback.owner) if callback.owner else self._server_secret
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", **signature_headers(secret, callback.id, timestamp, body)}
        if shape.extra_headers is not None:
            headers.update(shape.extra_headers(task, secret_key(secret), timestamp))
        return _Message(body, headers)
