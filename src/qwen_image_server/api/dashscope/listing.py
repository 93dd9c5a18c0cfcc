"""DashScope's task list, `GET /api/v1/tasks` (the SDK's `ImageSynthesis.list`): the caller's tasks,
newest first, filtered by time window, model, status or id, one page of them and the total.

The tasks come newest first (api/tasks.py `newest_tasks`, which filters by owner and status only), so
the window is walked from its end and the walk stops at its start; the default window is
DashScope's, the last 24 hours.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from qwen_image_server.api.dashscope.schemas import (
    EDIT_NAMES,
    EDIT_PLUS_NAMES,
    TEXT_TO_IMAGE_NAMES,
    TaskListItem,
    TaskListResponse,
)
from qwen_image_server.api.dashscope.translate import TASK_STATUS, undated
from qwen_image_server.domain import ModelName
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.tasks.model import Task, TaskStatus

DEFAULT_WINDOW = timedelta(hours=24)
MAX_PAGE_SIZE = 100
_TIME_FORMAT = "%Y%m%d%H%M%S"  # DashScope's, e.g. 20250420000000 (UTC here)
_OUR_STATUS = {name: status for status, name in TASK_STATUS.items()}


@dataclass(frozen=True)
class TaskQuery:
    start: datetime
    end: datetime
    models: frozenset[ModelName] | None
    status: TaskStatus | None
    task_id: str | None
    api_key_id: str | None  # the tasks of this key only
    page_no: int
    page_size: int


def task_query(
    *,
    start_time: str | None,
    end_time: str | None,
    model_name: str | None,
    status: str | None,
    task_id: str | None,
    api_key_id: str | None,
    page_no: int,
    page_size: int,
) -> TaskQuery:
    """The query string checked: bad values are 400 InvalidParameter naming the parameter."""
    if page_no < 1:
        raise InvalidParameter(f"page_no must be 1 or more, got {page_no}", param="page_no")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidParameter(f"page_size must be 1 to {MAX_PAGE_SIZE}, got {page_size}", param="page_size")
    if status is not None and status not in _OUR_STATUS:
        choices = ", ".join(_OUR_STATUS)
        raise InvalidParameter(f"status {status!r} is not one of {choices}", param="status")
    end = _time(end_time, "end_time") or datetime.now(UTC)
    start = _time(start_time, "start_time") or end - DEFAULT_WINDOW
    return TaskQuery(
        start=start,
        end=end,
        models=_models(model_name) if model_name else None,
        status=_OUR_STATUS[status] if status else None,
        task_id=task_id or None,
        api_key_id=api_key_id or None,
        page_no=page_no,
        page_size=page_size,
    )


def _time(text: str | None, param: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidParameter(
            f"{param} {text!r} is not YYYYMMDDhhmmss (UTC), e.g. 20250420000000", param=param
        ) from None


def _models(name: str) -> frozenset[ModelName]:
    """Our models that tasks asked for under DashScope's `name` run on (none for a name not known)."""
    name = undated(name)
    if name in TEXT_TO_IMAGE_NAMES:
        return frozenset({ModelName.QWEN_IMAGE})
    if name in EDIT_NAMES:  # 2-3 input images run on edit-plus
        return frozenset({ModelName.QWEN_IMAGE_EDIT, ModelName.QWEN_IMAGE_EDIT_PLUS})
    if name in EDIT_PLUS_NAMES:
        return frozenset({ModelName.QWEN_IMAGE_EDIT_PLUS})
    return frozenset()


async def list_tasks(newest: AsyncIterator[Task], query: TaskQuery, request_id: str) -> TaskListResponse:
    """One page of the tasks in `newest` (newest first) that match `query`, and their total."""
    first = (query.page_no - 1) * query.page_size
    page: list[TaskListItem] = []
    total = 0
    async for task in newest:
        if task.created_at < query.start:  # newest first: the rest are older still
            break
        if _matches(task, query):
            if first <= total < first + query.page_size:
                page.append(_item(task))
            total += 1
    return TaskListResponse(
        request_id=request_id,
        data=page,
        total=total,
        total_page=math.ceil(total / query.page_size),
        page_no=query.page_no,
        page_size=query.page_size,
    )


def _matches(task: Task, query: TaskQuery) -> bool:
    if task.created_at > query.end:
        return False
    if query.models is not None and task.model not in query.models:
        return False
    if query.api_key_id is not None and task.owner != query.api_key_id:
        return False
    return query.task_id is None or task.id == query.task_id


def _millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _item(task: Task) -> TaskListItem:
    return TaskListItem(
        task_id=task.id,
        status=TASK_STATUS[task.status],
        model_name=task.model.value,
        api_key_id=task.owner,
        gmt_create=_millis(task.created_at) or 0,
        start_time=_millis(task.started_at),
        end_time=_millis(task.finished_at),
    )
