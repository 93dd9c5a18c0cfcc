"""The callback outbox: final-state callbacks recorded with the state change, delivered later.

`enqueue_final_callback` runs inside the transaction that makes a task terminal (tasks/sql.py calls
it from every such transition), so a callback exists exactly when the final state does: a process
that dies after the commit leaves the row for any sender to deliver, one that dies before leaves
neither. Only the task id, URL and dialect are stored; the payload is rendered when it is sent, from
the task as it is then (its result links are signed at that moment).

`SqlCallbackStore` is the sender's side: claim due rows (a claim pushes `next_attempt_at` ahead,
so a sender that dies mid-delivery only delays the callback), record each attempt, list them.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from qwen_image_server.tasks.model import TaskStatus
from qwen_image_server.tasks.schema import callback_attempts, callbacks
from qwen_image_server.tasks.sql_rows import Row

if TYPE_CHECKING:
    from qwen_image_server.tasks.sql import SqlTaskStore


class CallbackStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt of the retry schedule failed, or the task is gone
    REFUSED = "refused"  # the URL leads to an address this server does not call; never retried


@dataclass(frozen=True)
class CallbackAttempt:
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None  # the receiver's answer; None when there was none (refused, timeout)
    outcome: CallbackStatus  # DELIVERED, FAILED (this attempt) or REFUSED
    error: str | None = None


@dataclass(frozen=True)
class Callback:
    id: str  # the Standard Webhooks `webhook-id`: the same on every attempt
    task_id: str
    url: str
    dialect: str
    owner: str | None
    status: CallbackStatus
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    attempts_made: int
    attempts: tuple[CallbackAttempt, ...] = ()  # the history; empty in what `claim_due` returns


async def enqueue_final_callback(conn: AsyncConnection, task_row: Row, now: datetime) -> None:
    """Record the callback of a task that has just become terminal, if it has a callback URL.
    Call inside the transaction that made it terminal."""
    if not task_row["callback_url"] or not TaskStatus(task_row["status"]).is_terminal:
        return
    row = {
        "id": f"msg_{uuid.uuid4().hex}",
        "task_id": task_row["id"],
        "url": task_row["callback_url"],
        "dialect": task_row["dialect"],
        "owner": task_row["owner"],
        "status": CallbackStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(insert(callbacks).values(row))


async def delete_callbacks_of(conn: AsyncConnection, task_ids: Collection[str]) -> None:
    """With their tasks (retention): the callbacks and their attempts."""
    if not task_ids:
        return
    ids = select(callbacks.c.id).where(callbacks.c.task_id.in_(list(task_ids)))
    await conn.execute(delete(callback_attempts).where(callback_attempts.c.callback_id.in_(ids)))
    await conn.execute(delete(callbacks).where(callbacks.c.task_id.in_(list(task_ids))))


class SqlCallbackStore:
    """Callbacks in the task database (the same engines as `store`)."""

    def __init__(self, store: SqlTaskStore) -> None:
        self._store = store

    async def claim_due(self, now: datetime, *, limit: int, hold_seconds: float) -> list[Callback]:
        """Pending callbacks whose time has come, held for `hold_seconds` (their next attempt is
        pushed that far ahead, so no other sender takes them meanwhile)."""
        due = (
            select(callbacks.c.id)
            .where(callbacks.c.status == CallbackStatus.PENDING.value, callbacks.c.next_attempt_at <= now)
            .order_by(callbacks.c.next_attempt_at, callbacks.c.id)
        )
        held_until = now + timedelta(seconds=hold_seconds)
        claimed: list[Callback] = []
        async with self._store.read_engine.connect() as conn:  # mostly nothing is due: then take no write lock
            if (await conn.execute(due.limit(1))).first() is None:
                return claimed
        async with self._store.write() as conn:
            for callback_id in (await conn.execute(due.limit(limit).with_for_update(skip_locked=True))).scalars():
                statement = (
                    update(callbacks)
                    .where(callbacks.c.id == callback_id, callbacks.c.next_attempt_at <= now)
                    .values(next_attempt_at=held_until, updated_at=now)
                    .returning(*callbacks.c)
                )
                row = (await conn.execute(statement)).mappings().first()
                if row is not None:
                    claimed.append(_callback(row, ()))
        return claimed

    async def record_attempt(
        self, callback: Callback, attempt: CallbackAttempt, *, status: CallbackStatus, next_attempt_at: datetime | None
    ) -> Callback:
        """Add `attempt` and move the callback to `status` (PENDING with the time of the next try)."""
        async with self._store.write() as conn:
            await conn.execute(insert(callback_attempts).values(callback_id=callback.id, **_attempt_row(attempt)))
            await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback.id)
                .values(
                    status=status.value,
                    attempts=callbacks.c.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    updated_at=attempt.started_at + timedelta(milliseconds=attempt.duration_ms),
                )
            )
            found = await _callbacks_where(conn, callbacks.c.id == callback.id)
        return found[0]

    async def for_task(self, task_id: str) -> list[Callback]:
        async with self._store.read_engine.connect() as conn:
            return await _callbacks_where(conn, callbacks.c.task_id == task_id)


async def _callbacks_where(conn: AsyncConnection, condition: Any) -> list[Callback]:
    rows = (await conn.execute(select(callbacks).where(condition).order_by(callbacks.c.created_at))).mappings().all()
    if not rows:
        return []
    query = (
        select(callback_attempts)
        .where(callback_attempts.c.callback_id.in_([row["id"] for row in rows]))
        .order_by(callback_attempts.c.callback_id, callback_attempts.c.number)
    )
    attempts: dict[str, list[CallbackAttempt]] = {}
    for attempt in (await conn.execute(query)).mappings().all():
        attempts.setdefault(attempt["callback_id"], []).append(_attempt(attempt))
    return [_callback(row, tuple(attempts.get(row["id"], ()))) for row in rows]


def _callback(row: Row, attempts: tuple[CallbackAttempt, ...]) -> Callback:
    return Callback(
        id=row["id"],
        task_id=row["task_id"],
        url=row["url"],
        dialect=row["dialect"],
        owner=row["owner"],
        status=CallbackStatus(row["status"]),
        next_attempt_at=row["next_attempt_at"] if row["status"] == CallbackStatus.PENDING.value else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempts_made=row["attempts"],
        attempts=attempts,
    )


def _attempt_row(attempt: CallbackAttempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at,
        "duration_ms": attempt.duration_ms,
        "status_code": attempt.status_code,
        "outcome": attempt.outcome.value,
        "error": attempt.error,
    }


def _attempt(row: Row) -> CallbackAttempt:
    return CallbackAttempt(
        number=row["number"],
        started_at=row["started_at"],
        duration_ms=row["duration_ms"],
        status_code=row["status_code"],
        outcome=CallbackStatus(row["outcome"]),
        error=row["error"],
    )
