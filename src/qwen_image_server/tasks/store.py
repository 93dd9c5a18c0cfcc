"""The task store and queue seam. `SqlTaskStore` (tasks/sql.py) is the implementation: SQLite by
default, PostgreSQL for several machines. Every implementation passes tests/contracts/.

Rules every implementation keeps:
- Terminal states never change: every transition is conditional on the current state (and, for a
  running task, on the worker that holds its lease). A transition that no longer applies raises
  `TaskConflict` (or, for lease holders, `LeaseLost`) and changes nothing.
- Claiming is atomic: two workers never claim the same task.
- All times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Protocol

from qwen_image_server.domain import ModelName
from qwen_image_server.errors import CallerError
from qwen_image_server.report import TaskReport
from qwen_image_server.tasks.model import (
    ActiveTasks,
    Idempotency,
    NewTask,
    Progress,
    StoredImage,
    Task,
    TaskError,
    TaskPage,
    TaskStatus,
    WorkerInfo,
)


class TaskNotFound(CallerError):
    status = 404
    code = "task_not_found"


class TaskConflict(CallerError):
    """The task is not in a state that allows this change (e.g. canceling a finished task)."""

    status = 409
    code = "task_conflict"


class LeaseLost(TaskConflict):
    """The worker no longer holds the task (its lease expired and it was requeued or finished)."""

    status = 409
    code = "lease_lost"


class TaskStore(Protocol):
    async def start(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    async def close(self) -> None: ...

    # -- API side --------------------------------------------------------------------------------

    async def create(self, new: NewTask) -> Task:
        """A queued task; with `new.idempotency`, the task an earlier use of the key made (concurrent
        uses of one key make one task), or `IdempotencyKeyReused` when it came with another request."""

    async def replay(self, owner: str | None, idempotency: Idempotency) -> Task | None:
        """The task an unexpired use of the key made for this owner and request, or None (read only)."""

    async def get(self, task_id: str) -> Task:
        """The task, or `TaskNotFound`."""

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """Newest first. `cursor` is the `next_cursor` of the previous page."""

    async def count_tasks(
        self,
        *,
        owner: str | None = None,
        statuses: Collection[TaskStatus] | None = None,
        created_since: datetime | None = None,
    ) -> int:
        """How many tasks match (for limits): of `owner` (None: anyone's), in `statuses`, created
        at or after `created_since`."""

    async def wait_for_change(self, task_id: str, timeout: float) -> None:
        """Until this store changes the task, or `timeout` seconds pass (readers poll after it: a
        change made by another process is announced only on PostgreSQL, and only while its
        listening connection is up; see tasks/notify.py)."""

    async def queue_position(self, task_id: str) -> int | None:
        """0 for the next task to run; None unless the task is queued."""

    async def get_with_position(self, task_id: str) -> tuple[Task, int | None]:
        """The task and its `queue_position`, read together (a poll of the native API is one read)."""

    async def active_tasks(self) -> list[ActiveTasks]:
        """Queued and running tasks counted per model and status, with the oldest's creation time
        (one query, for the metrics of each scrape); models with none are left out."""

    async def request_cancel(self, task_id: str) -> Task:
        """A queued task becomes canceled at once; a running one gets `cancel_requested` (its worker
        stops it at the next step). A terminal task is returned unchanged."""

    # -- worker side -----------------------------------------------------------------------------

    async def claim(self, worker_id: str, models: Collection[ModelName], lease_seconds: float) -> Task | None:
        """Take the next queued task for one of `models` (highest priority, then oldest): it becomes
        running with `attempts` + 1, `started_at` set on the first attempt, and a lease."""

    async def claim_batch(
        self, worker_id: str, models: Collection[ModelName], lease_seconds: float, *, limit: int
    ) -> list[Task]:
        """The task `claim` would take (first), and, when it has a `batch_key`, up to `limit - 1`
        more due queued tasks of the same key for one of `models`, in claim order (highest
        priority, then oldest); all claimed as `claim` does, at once. [] when none is queued."""

    async def heartbeat(
        self,
        task_id: str,
        worker_id: str,
        lease_seconds: float,
        progress: Progress | None,
        previews: Sequence[StoredImage] | None = None,
    ) -> bool:
        """Extend the lease and record progress (and, when given, the full list of previews so far).
        Returns whether a cancel was requested. Raises `LeaseLost` if `worker_id` no longer holds
        the task."""

    async def with_inputs(self, task: Task) -> Task:
        """The claimed task with the bytes of its input images (task reads and lists leave them out).
        Raises `LeaseLost` when the task has ended since (its inputs are deleted with its end)."""

    async def complete(
        self, task_id: str, worker_id: str, results: Sequence[StoredImage], report: TaskReport | None = None
    ) -> Task: ...

    async def fail(self, task_id: str, worker_id: str, error: TaskError) -> Task: ...

    async def finish_canceled(self, task_id: str, worker_id: str) -> Task: ...

    async def retry_later(self, task_id: str, worker_id: str, error: TaskError, delay_seconds: float) -> Task:
        """After a transient failure (storage full, database busy): queued again but not claimed for
        `delay_seconds` while attempts are left, else failed with `error`; canceled if that was asked."""

    async def release(self, task_id: str, worker_id: str) -> Task:
        """Give a running task back to the queue (graceful drain); the attempt is not counted."""

    async def requeue_expired(self, now: datetime) -> list[Task]:
        """Running tasks whose lease expired go back to the queue, or fail with code `worker_lost`
        once they have used `max_attempts`. Returns the tasks changed."""

    async def delete_finished_before(self, cutoff: datetime) -> list[Task]:
        """Delete terminal tasks that finished before `cutoff`; returns them (to delete their images)."""

    # -- workers ---------------------------------------------------------------------------------

    async def announce_worker(self, worker: WorkerInfo) -> None:
        """Insert or update the worker's row (its models, state and `last_seen`)."""

    async def forget_worker(self, worker_id: str) -> None: ...

    async def live_workers(self, seen_since: datetime) -> list[WorkerInfo]: ...
