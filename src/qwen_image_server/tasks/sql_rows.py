"""Rows <-> task model objects for the SQL task store, and its pagination cursor."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from qwen_image_server.domain import GenerationRequest, ModelName, OutputFormat
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.report import TaskReport
from qwen_image_server.tasks.model import (
    NewTask,
    Progress,
    StoredImage,
    Task,
    TaskError,
    TaskStatus,
    WorkerInfo,
)

Row = Mapping[Any, Any]  # a result row as a mapping (SQLAlchemy `RowMapping`), or an inserted dict


def new_task_row(new: NewTask, now: datetime) -> dict[str, Any]:
    return {
        "id": new.id,
        "status": TaskStatus.QUEUED.value,
        "model": new.request.model.value,
        "dialect": new.dialect,
        "owner": new.owner,
        "priority": new.priority,
        "callback_url": new.callback_url,
        "request_json": new.request.to_stored_json(),
        "attempts": 0,
        "max_attempts": new.max_attempts,
        "progress_step": 0,
        # Known from the request: the engine reports one step per denoising step of every image, and
        # image-to-image runs only its `strength` of the steps. A Lightning `high` runs the worker's
        # `lightning_steps` instead, which the store cannot know (workers sharing one database may be
        # set differently): the worker sets that total when it starts the task.
        "progress_total": new.request.denoising_steps * new.request.num_images_per_prompt,
        "results_json": "[]",
        "previews_json": "[]",
        "error_code": None,
        "error_message": None,
        "cancel_requested": False,
        "worker_id": None,
        "lease_expires_at": None,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "batch_key": new.request.batch_key,
        "report_json": None,
    }


def task_from_row(row: Row, request: GenerationRequest | None = None) -> Task:
    """The task in `row`; pass `request` when it is at hand to skip parsing `request_json`."""
    error = None
    if row["error_code"] is not None:
        error = TaskError(code=row["error_code"], message=row["error_message"] or "")
    return Task(
        id=row["id"],
        status=TaskStatus(row["status"]),
        request=request or GenerationRequest.from_stored_json(row["request_json"]),
        dialect=row["dialect"],
        owner=row["owner"],
        priority=row["priority"],
        callback_url=row["callback_url"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        progress=Progress(step=row["progress_step"], total=row["progress_total"]),
        results=results_from_json(row["results_json"]),
        previews=results_from_json(row["previews_json"]),
        error=error,
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        worker_id=row["worker_id"],
        lease_expires_at=row["lease_expires_at"],
        report=TaskReport.from_json(row["report_json"]),
    )


def results_to_json(results: Sequence[StoredImage]) -> str:
    return json.dumps(
        [
            {
                "key": image.key,
                "index": image.index,
                "seed": image.seed,
                "width": image.width,
                "height": image.height,
                "output_format": image.output_format.value,
                "size_bytes": image.size_bytes,
                "sha256": image.sha256,
                "partial_index": image.partial_index,
            }
            for image in results
        ]
    )


def results_from_json(text: str) -> tuple[StoredImage, ...]:
    return tuple(
        StoredImage(
            key=item["key"],
            index=item["index"],
            seed=item["seed"],
            width=item["width"],
            height=item["height"],
            output_format=OutputFormat(item["output_format"]),
            size_bytes=item["size_bytes"],
            sha256=item["sha256"],
            partial_index=item.get("partial_index"),
        )
        for item in json.loads(text)
    )


def worker_row(worker: WorkerInfo) -> dict[str, Any]:
    return {
        "id": worker.id,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "models_json": json.dumps([model.value for model in worker.models]),
        "state": worker.state,
        "last_seen": worker.last_seen,
        "problem": worker.problem,
    }


def worker_from_row(row: Row) -> WorkerInfo:
    known = {model.value for model in ModelName}
    # A newer worker may serve a model this version does not know; leave it out rather than fail.
    models = tuple(ModelName(name) for name in json.loads(row["models_json"]) if name in known)
    return WorkerInfo(
        id=row["id"],
        hostname=row["hostname"],
        pid=row["pid"],
        models=models,
        state=row["state"],
        last_seen=row["last_seen"],
        problem=row["problem"],
    )


def encode_cursor(created_at: datetime, task_id: str) -> str:
    """An opaque cursor naming the last task of a page (the keyset: created_at, id)."""
    raw = json.dumps([created_at.isoformat(), task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, task_id = json.loads(raw)
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None or not isinstance(task_id, str):
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidParameter(
            "cursor is not a cursor this server returned; pass next_cursor from the previous page", param="cursor"
        ) from exc
    return created_at, task_id
