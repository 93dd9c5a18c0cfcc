"""Idempotency keys in the task database: one key, one task, whatever the concurrency.

`claim_key` runs in the transaction that creates the task, before the task is inserted. It inserts
the key with ON CONFLICT DO NOTHING: of concurrent requests with one key exactly one inserts it (on
PostgreSQL the others wait at that insert until its transaction ends), and the others read the task
it points at (`task_holding_key`). A key is never deleted while it may be read: an expired one is
taken over by a conditional UPDATE, so two takers cannot both win. (The earlier code deleted the key
row whatever its age and inserted its own, and a transaction that had read before a concurrent
commit replaced the winner's key: two tasks for one key on PostgreSQL.)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from qwen_image_server.errors import IdempotencyKeyReused
from qwen_image_server.tasks.model import IDEMPOTENCY_TTL_SECONDS, Idempotency, NewTask
from qwen_image_server.tasks.schema import idempotency_keys
from qwen_image_server.tasks.sql_rows import Row
from qwen_image_server.tasks.store import TaskConflict


def claim_key(conn: Connection, new: NewTask, now: datetime) -> bool:
    """Make `new`'s key point at `new`: True when it was free (never used, or expired), False when
    another task holds it. Never deletes a key: an expired one is taken over by a conditional
    UPDATE, so of two concurrent takers only one succeeds."""
    assert new.idempotency is not None
    owner, key = new.owner or "", new.idempotency.key
    claim = {"fingerprint": new.idempotency.fingerprint, "task_id": new.id, "created_at": now}
    insert_if_absent = _dialect_insert(conn)(idempotency_keys).values(owner=owner, key=key, **claim)
    if conn.execute(insert_if_absent.on_conflict_do_nothing()).rowcount == 1:
        return True
    expired = idempotency_keys.c.created_at <= now - timedelta(seconds=IDEMPOTENCY_TTL_SECONDS)
    take_over = (
        update(idempotency_keys)
        .where(idempotency_keys.c.owner == owner, idempotency_keys.c.key == key, expired)
        .values(**claim)
    )
    return conn.execute(take_over).rowcount == 1


def _dialect_insert(conn: Connection) -> Callable[[Any], Any]:
    """The INSERT of the connection's database, which has ON CONFLICT DO NOTHING (both do)."""
    return postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert


def task_holding_key(conn: Connection, new: NewTask) -> str:
    """The task that holds `new`'s key (just found taken); raises if it came with another request."""
    assert new.idempotency is not None
    row = key_row(conn, new.owner, new.idempotency.key, now=None)
    if row is None:  # cannot happen: the key was just found taken in this transaction
        raise TaskConflict("the Idempotency-Key was released while it was being read; send the request again")
    check_fingerprint(row, new.idempotency)
    return str(row["task_id"])


def key_row(conn: Connection, owner: str | None, key: str, now: datetime | None) -> Row | None:
    """The key's row; with `now`, only while it has not expired."""
    query = select(idempotency_keys).where(idempotency_keys.c.owner == (owner or ""), idempotency_keys.c.key == key)
    if now is not None:
        query = query.where(idempotency_keys.c.created_at > now - timedelta(seconds=IDEMPOTENCY_TTL_SECONDS))
    return conn.execute(query).mappings().first()


def check_fingerprint(row: Row, idempotency: Idempotency) -> None:
    if row["fingerprint"] != idempotency.fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request in the last 24 hours; use a new key",
            param="Idempotency-Key",
        )
