"""The task database's tables, as SQLAlchemy Core. The migrations in `tasks/migrations/versions/`
create the same schema by hand; tests/contracts checks that the two agree.

Times are stored as naive UTC (`UtcDateTime`) so that SQLite and PostgreSQL hold the same values, and
come back as timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime in Python, a naive UTC timestamp in the database.

    Refuses naive datetimes on the way in: a naive value is ambiguous and would be stored wrongly."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the task store needs timezone-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# Lengths bound what PostgreSQL accepts (VARCHAR(n)); SQLite ignores them.
ID_LENGTH = 64
NAME_LENGTH = 255

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("model", String(64), nullable=False),
    Column("dialect", String(32), nullable=False),
    Column("owner", String(NAME_LENGTH), nullable=True),
    Column("priority", Integer, nullable=False),
    Column("callback_url", Text, nullable=True),
    Column("request_json", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("progress_step", Integer, nullable=False),
    Column("progress_total", Integer, nullable=False),
    Column("results_json", Text, nullable=False),
    Column("previews_json", Text, nullable=False, server_default="[]"),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("worker_id", String(NAME_LENGTH), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    # A queued task is not claimed before this time (set when a transient failure retries it later).
    Column("not_before", UtcDateTime, nullable=True),
    # Queued tasks with the same key can run as one pipeline call (`GenerationRequest.batch_key`);
    # NULL: the task runs alone.
    Column("batch_key", String(128), nullable=True),
    # What the run did beyond the pictures (report.TaskReport as JSON), written with the results.
    Column("report_json", Text, nullable=True),
    # The claim: WHERE status = 'queued' ORDER BY priority DESC, created_at, id (also the queue position
    # count and the expired-lease sweep, which filter on status first).
    Index("ix_tasks_status_priority_created", "status", "priority", "created_at"),
    # Listing newest first (keyset pagination on created_at, id), for everyone or for one owner.
    Index("ix_tasks_created_id", "created_at", "id"),
    # A batch claim's partners: WHERE status = 'queued' AND batch_key = ... in the claim's order.
    Index("ix_tasks_status_batch_key", "status", "batch_key", "priority", "created_at"),
    Index("ix_tasks_owner_created", "owner", "created_at"),
    # Retention: terminal tasks that finished before a cutoff.
    Index("ix_tasks_finished_at", "finished_at"),
)

# The input images (kind "image", position 0..) and mask (kind "mask") of a task, kept out of its row:
# read only by the worker that runs it, deleted when it ends. Task reads and lists never touch them.
task_inputs = Table(
    "task_inputs",
    metadata,
    Column("task_id", String(ID_LENGTH), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("owner", String(NAME_LENGTH), primary_key=True),  # "" on an open server
    Column("key", String(NAME_LENGTH), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("task_id", String(ID_LENGTH), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("secret_sha256", String(64), nullable=False),  # the key itself is never stored
    Column("scopes_json", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    # Signs this key's callbacks (Standard Webhooks, `whsec_...`). Kept in clear: the receiver holds
    # the same secret to verify, so it cannot be a one-way hash. Made on first use for older keys.
    Column("webhook_secret", String(128), nullable=True),
)

# The callback outbox: one row per task that has a callback URL, written in the same transaction as
# the task's final state (so no callback is lost when a process dies), sent by `CallbackSender`.
callbacks = Table(
    "callbacks",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),  # the `webhook-id`, the same on every retry
    Column("task_id", String(ID_LENGTH), nullable=False, unique=True),  # one final callback per task
    Column("url", Text, nullable=False),
    # scheme://host:port of the URL: a sender runs at most `callback_destination_concurrency`
    # attempts per destination, so a slow receiver delays only its own callbacks.
    Column("destination", String(320), nullable=False),
    Column("dialect", String(32), nullable=False),
    Column("owner", String(NAME_LENGTH), nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=True),  # also pushed ahead while a sender holds it
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The sender's query: pending rows that are due, soonest first.
    Index("ix_callbacks_status_next_attempt", "status", "next_attempt_at"),
)

callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("callback_id", String(ID_LENGTH), primary_key=True),
    Column("number", Integer, primary_key=True),  # 1, 2, ...
    Column("started_at", UtcDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),  # the receiver's HTTP status; None when none came
    Column("outcome", String(16), nullable=False),  # delivered | failed | refused
    Column("error", Text, nullable=True),
)

# Callback URLs that answered HTTP 410 Gone (Standard Webhooks: the endpoint is gone): nothing more
# is sent to the exact URL; its later callbacks are recorded as refused with `reason`.
disabled_callback_urls = Table(
    "disabled_callback_urls",
    metadata,
    Column("url", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("disabled_at", UtcDateTime, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(NAME_LENGTH), primary_key=True),
    Column("hostname", String(NAME_LENGTH), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("models_json", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("problem", Text, nullable=True),  # what keeps it from finishing tasks, for /readyz
    Index("ix_workers_last_seen", "last_seen"),
)
