"""Input images held apart from the task row.

An edit task may carry three input images of several MiB each. Kept inside the task row (as they
were, base64 in `request_json`) they made every poll and list read and decode them (issue 11: 8 such
tasks made a 505 MiB database, and listing them cost a second and 660 MiB). Now the row holds the request without
the bytes (with their count), the bytes live in `task_inputs`, written in the transaction that creates
the task, read only by the worker that runs it (`attach_inputs`), and deleted in the transaction
that makes the task terminal (a retried task keeps them).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from qwen_image_server.domain import GenerationRequest
from qwen_image_server.tasks.schema import task_inputs
from qwen_image_server.tasks.store import LeaseLost

IMAGE, MASK = "image", "mask"


def store_inputs(conn: Connection, task_id: str, request: GenerationRequest) -> None:
    """Write the request's input images and mask (call in the transaction that inserts the task)."""
    rows = [{"task_id": task_id, "kind": IMAGE, "position": i, "data": data} for i, data in enumerate(request.images)]
    if request.mask is not None:
        rows.append({"task_id": task_id, "kind": MASK, "position": 0, "data": request.mask})
    if rows:
        conn.execute(insert(task_inputs), rows)


def attach_inputs(conn: Connection, task_id: str, request: GenerationRequest) -> GenerationRequest:
    """The request with its input images put back. Raises `LeaseLost` when they are gone: the task
    ended (and they were deleted) since it was claimed."""
    if request.has_inputs_attached:  # none, or a task stored inline by an older version
        return request
    query = select(task_inputs.c.kind, task_inputs.c.data).where(task_inputs.c.task_id == task_id)
    rows = conn.execute(query.order_by(task_inputs.c.kind, task_inputs.c.position)).all()
    images = tuple(bytes(row.data) for row in rows if row.kind == IMAGE)
    masks = [bytes(row.data) for row in rows if row.kind == MASK]
    try:
        return request.with_inputs(images, masks[0] if masks else None)
    except ValueError:
        raise LeaseLost(f"the input images of task {task_id} are gone; it has ended") from None


def delete_inputs_of(conn: Connection, task_ids: Collection[str]) -> None:
    """With the end of their tasks."""
    if task_ids:
        conn.execute(delete(task_inputs).where(task_inputs.c.task_id.in_(list(task_ids))))
