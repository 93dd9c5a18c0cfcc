"""The sender: delivers the callback outbox (tasks/outbox.py), in every process that runs maintenance.

Each round claims the callbacks that are due, renders each one's body from its task as it is now
(in the shape of the dialect that made the task), signs it with Standard Webhooks headers and POSTs
it once through `safe_fetch.post`: the address is checked at connect time, no redirect is followed,
one deadline bounds the attempt. Every attempt is recorded. A non-2xx answer or no answer is tried
again after the next wait of `callback_retry_seconds`; when the schedule runs out the callback is
`failed`. A URL that leads to a non-public address, or answers with a redirect, is `refused` at once
and never retried.

Delivery is at least once: a sender that dies between the receiver's answer and the record sends
that callback again after the claim runs out, with the same `webhook-id` for the receiver to spot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qwen_image_server import safe_fetch
from qwen_image_server.callbacks.signing import secret_key, signature_headers
from qwen_image_server.errors import FetchFailed, UrlNotAllowed
from qwen_image_server.results.links import ResultLinker
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.keys import SqlKeyStore
from qwen_image_server.tasks.model import Task, utcnow
from qwen_image_server.tasks.outbox import Callback, CallbackAttempt, CallbackStatus, SqlCallbackStore
from qwen_image_server.tasks.sql import describe_connection_error, is_connection_error
from qwen_image_server.tasks.store import TaskNotFound, TaskStore

log = logging.getLogger(__name__)

CLAIM_BATCH = 16  # callbacks one round sends concurrently (each in a thread: the POST is blocking)


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

    async def run(self) -> None:
        """Loop forever (cancel the asyncio task to stop)."""
        while True:
            try:
                sent = await self.deliver_due()
            except Exception as exc:  # a failing round must not end the loop; the rows wait for the next
                if is_connection_error(exc):  # an outage is expected now and then: one line, no traceback
                    log.warning("callbacks wait: the task database is unreachable: %s", describe_connection_error(exc))
                else:
                    log.exception("callback delivery failed")
                sent = 0
            if sent < CLAIM_BATCH:
                await asyncio.sleep(self._settings.poll_interval_seconds)

    async def deliver_due(self) -> int:
        """One round: claim what is due and attempt each once. Returns how many were attempted."""
        hold = self._settings.callback_timeout_seconds + 30  # outlives the attempt and its record
        due = await self._callbacks.claim_due(utcnow(), limit=CLAIM_BATCH, hold_seconds=hold)
        await asyncio.gather(*(self._attempt(callback) for callback in due))
        return len(due)

    async def _attempt(self, callback: Callback) -> None:
        started, clock = utcnow(), time.monotonic()
        number = callback.attempts_made + 1
        try:
            result = await self._send(callback)
        except Exception as exc:  # e.g. a payload that cannot be rendered: a fault of ours, not retried
            log.exception("callback %s of task %s could not be made", callback.id, callback.task_id)
            result = _Result(CallbackStatus.FAILED, error=f"the callback could not be made: {exc!r}", final=True)
        attempt = CallbackAttempt(
            number=number,
            started_at=started,
            duration_ms=round((time.monotonic() - clock) * 1000),
            status_code=result.status_code,
            outcome=result.outcome,
            error=result.error,
        )
        status, next_at = self._after(result, number, started)
        await self._callbacks.record_attempt(callback, attempt, status=status, next_attempt_at=next_at)
        log.info("callback %s of task %s, attempt %d: %s", callback.id, callback.task_id, number, result.error or "ok")

    def _after(self, result: _Result, number: int, now: datetime) -> tuple[CallbackStatus, datetime | None]:
        """The callback's status after attempt `number`, and when to try next."""
        schedule = self._settings.callback_retry_seconds
        if result.outcome is not CallbackStatus.FAILED:
            return result.outcome, None
        if result.final or number > len(schedule):
            return CallbackStatus.FAILED, None
        return CallbackStatus.PENDING, now + timedelta(seconds=schedule[number - 1])

    async def _send(self, callback: Callback) -> _Result:
        try:
            task = await self._store.get(callback.task_id)
        except TaskNotFound:
            return _Result(CallbackStatus.FAILED, error="the task no longer exists", final=True)
        message = await self._message(callback, task)
        try:
            answer = await asyncio.to_thread(safe_fetch.post, callback.url, message.body, message.headers, self._policy)
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
        return _Result(CallbackStatus.FAILED, status_code=code, error=f"the receiver answered HTTP {code}")

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
