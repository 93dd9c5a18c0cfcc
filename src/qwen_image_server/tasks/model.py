"""Tasks: what a request becomes once it is accepted. These types cross every boundary.

A task moves queued -> running -> succeeded | failed | canceled. A running task whose worker dies
goes back to queued (its lease expires) until it has used up its attempts. Terminal states never
change. The request is stored as JSON with a schema version (never pickled).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from qwen_image_server.domain import GenerationRequest, ModelName, OutputFormat
from qwen_image_server.report import TaskReport


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})


def new_task_id() -> str:
    """`task_` + 26 characters: time-ordered (sortable by creation) and unguessable."""
    millis = int(datetime.now(UTC).timestamp() * 1000)
    return f"task_{millis:012x}{secrets.token_hex(7)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredImage:
    """One result image as kept by the results store; `key` names it there."""

    key: str
    index: int
    seed: int
    width: int
    height: int
    output_format: OutputFormat
    size_bytes: int
    sha256: str
    partial_index: int | None = None  # set on previews decoded from intermediate steps

    @property
    def content_type(self) -> str:
        return self.output_format.content_type


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str


@dataclass(frozen=True)
class Progress:
    step: int = 0
    total: int = 0

    @property
    def percent(self) -> float:
        return round(100.0 * self.step / self.total, 1) if self.total else 0.0


@dataclass(frozen=True)
class Idempotency:
    """A client's `Idempotency-Key` and a fingerprint (SHA-256) of the request it came with."""

    key: str
    fingerprint: str


IDEMPOTENCY_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class NewTask:
    """What an API dialect hands to the store to create a task."""

    request: GenerationRequest
    dialect: str = "native"
    owner: str | None = None
    priority: int = 0
    callback_url: str | None = None
    max_attempts: int = 3
    idempotency: Idempotency | None = None
    id: str = field(default_factory=new_task_id)


@dataclass(frozen=True)
class Task:
    id: str
    status: TaskStatus
    request: GenerationRequest
    dialect: str
    owner: str | None
    priority: int
    callback_url: str | None
    attempts: int
    max_attempts: int
    progress: Progress
    results: tuple[StoredImage, ...]
    error: TaskError | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    previews: tuple[StoredImage, ...] = ()  # partial images, while running and after
    report: TaskReport | None = None  # what the run did beyond the pictures; None before it ends

    @property
    def model(self) -> ModelName:
        return self.request.model


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]
    next_cursor: str | None


@dataclass(frozen=True)
class ActiveTasks:
    """How many tasks of one model are in one unfinished status, and when the oldest was created."""

    model: ModelName
    status: TaskStatus
    count: int
    oldest_created_at: datetime


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as it announces itself (for /readyz and /v1/models)."""

    id: str
    hostname: str
    pid: int
    models: tuple[ModelName, ...]
    state: str  # "loading" | "warming" | "ready" | "draining"
    last_seen: datetime
    problem: str | None = None  # what keeps it from finishing tasks now (results storage failing...)
