"""The callback outbox: final-state callbacks recorded with the state change, delivered later.

`enqueue_final_callback` runs inside the transaction that makes a task terminal (tasks/sql.py calls
it from every such transition), so a callback exists exactly when the final state does: a process
that dies after the commit leaves the row for any sender to deliver, one that dies before leaves
neither. Only the task id, URL and dialect are stored; the payload is rendered when it is sent, from
the task as it is then (its result links are signed at that moment).

`SqlCallbackStore` is the sender's side: claim due rows (a claim pushes `next_attempt_at` ahead,
so a sender that dies mid-delivery only delays the callback), record each attempt, list them, and
keep the URLs that an HTTP 410 Gone answer disabled.

A sender claims only what it starts at once: at most its free slots, and per destination (scheme,
host and port of the URL) at most what that destination has room for. Rows it leaves stay due and
unheld, for the next free slot of this sender or of any other.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, Select, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from qwen_image_server.tasks.database import Database
from qwen_image_server.tasks.model import TaskStatus
from qwen_image_server.tasks.schema import callback_attempts, callbacks, disabled_callback_urls
from qwen_image_server.tasks.sql_rows import Row


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
    destination: str  # scheme://host:port of `url` (`destination_of`)
    dialect: str
    owner: str | None
    status: CallbackStatus
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    attempts_made: int
    attempts: tuple[CallbackAttempt, ...] = ()  # the history; empty in what `claim_due` returns


def destination_of(url: str) -> str:
    """Where a callback goes, as one receiver: `scheme://host:port`, lower case, with the scheme's
    default port filled in (`https://Hooks.example/a` and `https://hooks.example:443/b` are one)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # not a URL the sender can call (refused at creation); it is its own destination
        return url[:320]
    scheme = parts.scheme.lower()
    port = port or {"http": 80, "https": 443}.get(scheme)
    host = f"[{host}]" if host and ":" in host else host
    return f"{scheme}://{host}:{port}"[:320]


@dataclass(frozen=True)
class DisabledUrl:
    """A callback URL that answered 410 Gone: nothing is sent to it until an operator enables it."""

    url: str
    reason: str
    disabled_at: datetime


@dataclass
class DeliverySlots:
    """A sender's attempts in flight, counted by destination (scheme, host and port) and by owner
    (the task's API key), with the caps that keep one slow receiver, or one tenant with many
    receivers, from holding every slot. None: no cap. Tasks made without a key have no owner cap
    (on an open server everyone is the same nobody)."""

    per_destination: int | None = None
    per_owner: int | None = None
    destinations: Counter[str] = field(default_factory=Counter)
    owners: Counter[str] = field(default_factory=Counter)

    def full_destinations(self) -> list[str]:
        return _at_cap(self.destinations, self.per_destination)

    def full_owners(self) -> list[str]:
        return _at_cap(self.owners, self.per_owner)

    def has_room(self, destination: str, owner: str | None) -> bool:
        if self.per_destination is not None and self.destinations[destination] >= self.per_destination:
            return False
        return owner is None or self.per_owner is None or self.owners[owner] < self.per_owner

    def take(self, destination: str, owner: str | None) -> None:
        self.destinations[destination] += 1
        if owner is not None:
            self.owners[owner] += 1

    def give_back(self, destination: str, owner: str | None) -> None:
        _count_down(self.destinations, destination)
        if owner is not None:
            _count_down(self.owners, owner)

    def copy(self) -> DeliverySlots:
        return replace(self, destinations=Counter(self.destinations), owners=Counter(self.owners))


def _count_down(counts: Counter[str], name: str) -> None:
    counts[name] -= 1
    if counts[name] <= 0:
        del counts[name]


def _at_cap(counts: Counter[str], cap: int | None) -> list[str]:
    return [] if cap is None else [name for name, count in counts.items() if count >= cap]


def enqueue_final_callback(conn: Connection, task_row: Row, now: datetime) -> None:
    """Record the callback of a task that has just become terminal, if it has a callback URL.
    Call inside the transaction that made it terminal."""
    if not task_row["callback_url"] or not TaskStatus(task_row["status"]).is_terminal:
        return
    row = {
        "id": f"msg_{uuid.uuid4().hex}",
        "task_id": task_row["id"],
        "url": task_row["callback_url"],
        "destination": destination_of(task_row["callback_url"]),
        "dialect": task_row["dialect"],
        "owner": task_row["owner"],
        "status": CallbackStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(insert(callbacks), row)


def delete_callbacks_of(conn: Connection, task_ids: Collection[str]) -> None:
    """With their tasks (retention): the callbacks and their attempts."""
    if not task_ids:
        return
    ids = select(callbacks.c.id).where(callbacks.c.task_id.in_(list(task_ids)))
    conn.execute(delete(callback_attempts).where(callback_attempts.c.callback_id.in_(ids)))
    conn.execute(delete(callbacks).where(callbacks.c.task_id.in_(list(task_ids))))


class SqlCallbackStore:
    """Callbacks in the task database (raises `StoreUnavailable` when it cannot take a call now)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def claim_due(
        self, now: datetime, *, limit: int, hold_seconds: float, slots: DeliverySlots | None = None
    ) -> list[Callback]:
        """Pending callbacks whose time has come, held for `hold_seconds` (their next attempt is
        pushed that far ahead, so no other sender takes them meanwhile): at most `limit`, and only
        as many per destination and per owner as `slots` (the caller's attempts in flight and its
        caps) has room for. Soonest due first. `slots` itself is not changed."""
        room = slots.copy() if slots is not None else DeliverySlots()
        claimed: list[Callback] = []
        if limit <= 0:
            return claimed
        soonest = await self.next_due_at(exclude=room.full_destinations(), exclude_owners=room.full_owners())
        if soonest is None or soonest > now:  # mostly nothing is due: then take no write lock
            return claimed
        held_until = now + timedelta(seconds=hold_seconds)

        def claim(conn: Connection) -> list[Callback]:
            while len(claimed) < limit:
                wanted = limit - len(claimed)
                due = _due(now, room).limit(wanted).with_for_update(skip_locked=True)
                candidates = conn.execute(due).all()
                taken = 0
                for callback_id, destination, owner in candidates:
                    if not room.has_room(destination, owner):
                        continue  # filled up in this round: the row stays due, unheld
                    row = _hold(conn, callback_id, now, held_until)
                    if row is not None:
                        claimed.append(_callback(row, ()))
                        room.take(destination, owner)
                        taken += 1
                if len(candidates) < wanted or taken == 0:
                    break  # nothing more is due here (skipped rows are looked at again without their destination)
            return claimed

        return await self._database.run_write(claim)

    async def next_due_at(
        self, *, exclude: Collection[str] = (), exclude_owners: Collection[str] = ()
    ) -> datetime | None:
        """When the soonest pending callback is due (possibly already), leaving out those to the
        destinations in `exclude` and those of the owners in `exclude_owners`; None when none is
        pending. A held callback counts as due when its hold ends."""
        query = select(func.min(callbacks.c.next_attempt_at)).where(
            callbacks.c.status == CallbackStatus.PENDING.value,
            callbacks.c.destination.not_in(list(exclude)),
            _not_of(exclude_owners),
        )
        soonest: datetime | None = await self._database.run_read(lambda conn: conn.execute(query).scalar())
        return soonest

    async def disable_url(self, url: str, reason: str, now: datetime) -> None:
        """Send nothing more to `url` (it answered 410 Gone); `reason` is what its later callbacks
        record. Disabling a URL that is disabled already keeps the first reason."""
        row = {"url": url, "reason": reason, "disabled_at": now}
        found = select(disabled_callback_urls.c.url).where(disabled_callback_urls.c.url == url)

        def disable(conn: Connection) -> None:
            if conn.execute(found).first() is None:
                conn.execute(insert(disabled_callback_urls), row)

        with contextlib.suppress(IntegrityError):  # disabled already (by another sender, at the same time)
            await self._database.run_write(disable)

    async def disabled_reason(self, url: str) -> str | None:
        """Why `url` is disabled, or None when it is not."""
        query = select(disabled_callback_urls.c.reason).where(disabled_callback_urls.c.url == url)
        reason: str | None = await self._database.run_read(lambda conn: conn.execute(query).scalar())
        return reason

    async def disabled_urls(self) -> list[DisabledUrl]:
        """Every disabled URL, most recently disabled first."""
        query = select(disabled_callback_urls).order_by(disabled_callback_urls.c.disabled_at.desc())
        rows = await self._database.run_read(lambda conn: conn.execute(query).mappings().all())
        return [DisabledUrl(url=row["url"], reason=row["reason"], disabled_at=row["disabled_at"]) for row in rows]

    async def enable_url(self, url: str) -> bool:
        """Call `url` again (an operator's decision); False when it was not disabled."""
        statement = delete(disabled_callback_urls).where(disabled_callback_urls.c.url == url)
        return bool(await self._database.run_write(lambda conn: conn.execute(statement).rowcount))

    async def record_attempt(
        self, callback: Callback, attempt: CallbackAttempt, *, status: CallbackStatus, next_attempt_at: datetime | None
    ) -> Callback:
        """Add `attempt` and move the callback to `status` (PENDING with the time of the next try)."""

        def record(conn: Connection) -> Callback:
            conn.execute(insert(callback_attempts), {"callback_id": callback.id, **_attempt_row(attempt)})
            conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback.id)
                .values(
                    status=status.value,
                    attempts=callbacks.c.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    updated_at=attempt.started_at + timedelta(milliseconds=attempt.duration_ms),
                )
            )
            return _callbacks_where(conn, callbacks.c.id == callback.id)[0]

        return await self._database.run_write(record)

    async def for_task(self, task_id: str) -> list[Callback]:
        return await self._database.run_read(lambda conn: _callbacks_where(conn, callbacks.c.task_id == task_id))


def _due(now: datetime, room: DeliverySlots) -> Select[str, str, str | None]:
    return (
        select(callbacks.c.id, callbacks.c.destination, callbacks.c.owner)
        .where(
            callbacks.c.status == CallbackStatus.PENDING.value,
            callbacks.c.next_attempt_at <= now,
            callbacks.c.destination.not_in(room.full_destinations()),
            _not_of(room.full_owners()),
        )
        .order_by(callbacks.c.next_attempt_at, callbacks.c.id)
    )


def _not_of(owners: Collection[str]) -> ColumnElement[bool]:
    """Callbacks of tasks made without a key, or by a key not in `owners`."""
    return or_(callbacks.c.owner.is_(None), callbacks.c.owner.not_in(list(owners)))


def _hold(conn: Connection, callback_id: str, now: datetime, held_until: datetime) -> Row | None:
    """Hold one due callback until `held_until`; None if another sender took it meanwhile."""
    statement = (
        update(callbacks)
        .where(callbacks.c.id == callback_id, callbacks.c.next_attempt_at <= now)
        .values(next_attempt_at=held_until, updated_at=now)
        .returning(*callbacks.c)
    )
    row: Row | None = conn.execute(statement).mappings().first()
    return row


def _callbacks_where(conn: Connection, condition: Any) -> list[Callback]:
    rows = conn.execute(select(callbacks).where(condition).order_by(callbacks.c.created_at)).mappings().all()
    if not rows:
        return []
    query = (
        select(callback_attempts)
        .where(callback_attempts.c.callback_id.in_([row["id"] for row in rows]))
        .order_by(callback_attempts.c.callback_id, callback_attempts.c.number)
    )
    attempts: dict[str, list[CallbackAttempt]] = {}
    for attempt in conn.execute(query).mappings().all():
        attempts.setdefault(attempt["callback_id"], []).append(_attempt(attempt))
    return [_callback(row, tuple(attempts.get(row["id"], ()))) for row in rows]


def _callback(row: Row, attempts: tuple[CallbackAttempt, ...]) -> Callback:
    return Callback(
        id=row["id"],
        task_id=row["task_id"],
        url=row["url"],
        destination=row["destination"],
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
