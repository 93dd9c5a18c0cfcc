"""The task store's transitions, recorded in the metrics (metrics/recorded.py) once committed.

The store records them, not its callers: every way a task ends (a worker's final write, a cancel of
a queued task, a lease that ran out for good, a retry with no attempts left) passes through it, and
each is counted once, by the process whose write made it, after the transaction committed.
"""

from __future__ import annotations

from collections.abc import Iterable

from qwen_image_server.metrics import recorded
from qwen_image_server.tasks.model import Task


def created(task: Task) -> Task:
    recorded.task_created(task.model.value, task.dialect)
    return task


def claimed(tasks: Iterable[Task]) -> None:
    for task in tasks:
        # A claim sets `started_at` only the first time (a task back from a drain or a lapsed lease
        # keeps it), and always `updated_at`: the two are equal on a first claim alone.
        if task.started_at is not None and task.started_at == task.updated_at:
            recorded.task_first_claimed(task.model.value, task.created_at, task.started_at)


def ended(task: Task) -> Task:
    """`task`, after recording its end if the change made it final."""
    if task.status.is_terminal:
        recorded.task_finished(
            task.model.value,
            task.dialect,
            task.status.value,
            error_code=task.error.code if task.error is not None else None,
            started_at=task.started_at,
            finished_at=task.finished_at,
            images=len(task.results),
        )
    return task
