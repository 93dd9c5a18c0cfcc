"""The task store contract, run against every backend in conftest.BACKENDS."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from qwen_image_server.domain import ModelName, OutputFormat
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.tasks.migrations import alembic_config
from qwen_image_server.tasks.model import NewTask, Progress, StoredImage, Task, TaskError, TaskStatus, WorkerInfo
from qwen_image_server.tasks.schema import metadata
from qwen_image_server.tasks.sql import SqlTaskStore
from qwen_image_server.tasks.store import LeaseLost, TaskConflict, TaskNotFound
from tests.conftest import picture_bytes
from tests.contracts.conftest import FakeClock, make_request, new_task

pytestmark = pytest.mark.anyio

QWEN = ModelName.QWEN_IMAGE
EDIT = ModelName.QWEN_IMAGE_EDIT
LEASE = 30.0


def image(index: int = 0) -> StoredImage:
    return StoredImage(
        key=f"task/{index}.png",
        index=index,
        seed=1 + index,
        width=256,
        height=256,
        output_format=OutputFormat.PNG,
        size_bytes=1234,
        sha256="ab" * 32,
    )


async def claim_one(store: SqlTaskStore, worker: str = "w1", models: tuple[ModelName, ...] = (QWEN, EDIT)) -> Task:
    task = await store.claim(worker, models, LEASE)
    assert task is not None
    return task


# -- create / get -----------------------------------------------------------------------------------


async def test_create_returns_a_queued_task_that_get_returns_equal(store: SqlTaskStore) -> None:
    new = new_task(QWEN, priority=3, owner="key-1")
    created = await store.create(new)
    assert created.id == new.id
    assert created.status is TaskStatus.QUEUED
    assert (created.priority, created.owner, created.dialect) == (3, "key-1", "native")
    assert (created.attempts, created.max_attempts) == (0, 3)
    request = new.request
    assert created.progress == Progress(0, request.num_inference_steps * request.num_images_per_prompt)
    assert created.results == ()
    assert created.error is None
    assert not created.cancel_requested
    assert created.started_at is None and created.finished_at is None
    assert created.worker_id is None and created.lease_expires_at is None
    assert created.created_at.tzinfo is UTC and created.updated_at == created.created_at
    assert await store.get(new.id) == created


async def test_a_queued_image_to_image_task_counts_the_steps_that_will_run(store: SqlTaskStore) -> None:
    """strength 0.5 of 20 steps runs 10 per image: the queued task says 10 x 2, not 20 x 2 (it read
    20 and then dropped to 10 when the worker started it)."""
    request = make_request(images=(picture_bytes(),), strength=0.5, num_images_per_prompt=2)
    request = request.model_copy(update={"num_inference_steps": 20})
    created = await store.create(new_task(request=request))
    assert created.progress == Progress(0, 10 * 2)


async def test_request_with_input_image_bytes_round_trips(store: SqlTaskStore) -> None:
    pictures = (picture_bytes((300, 200)), picture_bytes((64, 64), fmt="JPEG"))
    request = make_request(ModelName.QWEN_IMAGE_EDIT_PLUS, prompt="put them together ✓", images=pictures)
    new = new_task(request=request)
    created = await store.create(new)
    loaded = await store.get(new.id)
    assert loaded == created
    assert loaded.request.images == (), "a read of the task leaves the input images out"
    assert loaded.request.input_image_count == 2
    assert loaded.request == request.without_inputs()
    assert loaded.model is ModelName.QWEN_IMAGE_EDIT_PLUS
    claimed = await store.claim("w1", [ModelName.QWEN_IMAGE_EDIT_PLUS], 30)
    assert claimed is not None
    assert (await store.with_inputs(claimed)).request == request, "the worker gets them back"


async def test_the_notes_of_acceptance_round_trip_with_the_request(store: SqlTaskStore) -> None:
    """What a dialect noted as not applied when it accepted the request is stored with it, so the
    result and the polls can say it too (api/outcome.py)."""
    notes = {"X-Fal-Runner-Hint": "no runners here", "loras.0.force": "applied anyway"}
    new = new_task(request=make_request().with_not_applied(notes))
    await store.create(new)
    loaded = await store.get(new.id)
    assert dict(loaded.request.not_applied) == notes
    claimed = await claim_one(store)
    assert dict(claimed.request.not_applied) == notes


async def test_input_images_stay_out_of_the_task_row_and_go_with_its_end(store: SqlTaskStore) -> None:
    from sqlalchemy import func, select

    from qwen_image_server.tasks.schema import task_inputs, tasks

    big = noise_png(300, 200)
    request = make_request(ModelName.QWEN_IMAGE_EDIT_PLUS, images=(big, big, big))
    await store.create(new_task(request=request))
    async with store.database.read() as conn:
        row_size = (await conn.execute(select(func.length(tasks.c.request_json)))).scalar_one()
        held = (await conn.execute(select(func.count()).select_from(task_inputs))).scalar_one()
    assert row_size < 2000 < len(big), f"the task row holds {row_size} characters"
    assert held == 3
    claimed = await store.claim("w1", [ModelName.QWEN_IMAGE_EDIT_PLUS], 30)
    assert claimed is not None
    await store.complete(claimed.id, "w1", [])
    async with store.database.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(task_inputs))).scalar_one() == 0
    with pytest.raises(LeaseLost):
        await store.with_inputs(claimed)


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    import io
    import os

    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, format="PNG")
    return out.getvalue()


async def test_a_task_stored_inline_by_an_older_version_keeps_its_images(store: SqlTaskStore) -> None:
    from sqlalchemy import update

    from qwen_image_server.tasks.schema import tasks

    request = make_request(ModelName.QWEN_IMAGE_EDIT, images=(picture_bytes((64, 64)),))
    created = await store.create(new_task(request=request))
    legacy = request.model_dump_json(exclude={"input_image_count", "has_mask"})  # as version 0.1 stored it
    async with store.database.write() as conn:
        await conn.execute(update(tasks).where(tasks.c.id == created.id).values(request_json=legacy))
    claimed = await store.claim("w1", [ModelName.QWEN_IMAGE_EDIT], 30)
    assert claimed is not None
    assert (await store.with_inputs(claimed)).request.images == request.images


async def test_retry_later_requeues_with_a_not_before_time(store: SqlTaskStore, clock: FakeClock) -> None:
    task = await store.create(new_task(max_attempts=2))
    assert await store.claim("w1", [ModelName.QWEN_IMAGE], 30) is not None
    error = TaskError("storage_unavailable", "cannot write results: No space left on device")
    again = await store.retry_later(task.id, "w1", error, delay_seconds=60)
    assert again.status is TaskStatus.QUEUED and again.worker_id is None and again.error is None
    assert await store.claim("w1", [ModelName.QWEN_IMAGE], 30) is None, "not before its backoff has passed"
    clock.advance(61)
    second = await store.claim("w2", [ModelName.QWEN_IMAGE], 30)
    assert second is not None and second.attempts == 2
    failed = await store.retry_later(task.id, "w2", error, delay_seconds=60)
    assert failed.status is TaskStatus.FAILED, "its attempts are used up"
    assert failed.error is not None and failed.error.code == "storage_unavailable"
    assert "after 2 attempts" in failed.error.message


async def test_retry_later_of_a_task_asked_to_cancel_cancels_it(store: SqlTaskStore) -> None:
    task = await store.create(new_task())
    assert await store.claim("w1", [ModelName.QWEN_IMAGE], 30) is not None
    await store.request_cancel(task.id)
    error = TaskError("storage_unavailable", "disk full")
    assert (await store.retry_later(task.id, "w1", error, 60)).status is TaskStatus.CANCELED
    with pytest.raises(LeaseLost):
        await store.retry_later(task.id, "w2", error, 60)


async def test_get_unknown_task_raises_not_found(store: SqlTaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.get("task_missing")


async def test_create_with_an_existing_id_conflicts(store: SqlTaskStore) -> None:
    await store.create(new_task(task_id="task_same"))
    with pytest.raises(TaskConflict):
        await store.create(new_task(task_id="task_same"))


# -- lifecycle ----------------------------------------------------------------------------------------


async def test_claim_heartbeat_complete(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    claimed = await claim_one(store, "w1")
    assert claimed.id == created.id
    assert claimed.status is TaskStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.worker_id == "w1"
    assert claimed.started_at is not None and claimed.started_at > created.created_at
    assert claimed.lease_expires_at == claimed.started_at + timedelta(seconds=LEASE)
    assert claimed.updated_at == claimed.started_at

    assert await store.heartbeat(created.id, "w1", LEASE, Progress(1, 4)) is False
    running = await store.get(created.id)
    assert running.progress == Progress(1, 4)
    assert running.lease_expires_at is not None and running.lease_expires_at > claimed.lease_expires_at
    assert await store.heartbeat(created.id, "w1", LEASE, None) is False
    assert (await store.get(created.id)).progress == Progress(1, 4)

    done = await store.complete(created.id, "w1", [image(0), image(1)])
    assert done.status is TaskStatus.SUCCEEDED
    assert done.results == (image(0), image(1))
    assert done.progress == Progress(4, 4)
    assert done.finished_at is not None and done.finished_at > running.updated_at
    assert done.started_at == claimed.started_at
    assert done.lease_expires_at is None
    assert done.updated_at == done.finished_at
    assert done.error is None
    assert await store.get(created.id) == done


async def test_fail_records_the_error(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    await claim_one(store)
    failed = await store.fail(created.id, "w1", TaskError("generation_failed", "out of memory"))
    assert failed.status is TaskStatus.FAILED
    assert failed.error == TaskError("generation_failed", "out of memory")
    assert failed.finished_at is not None and failed.lease_expires_at is None
    assert await store.get(created.id) == failed


async def test_claim_takes_highest_priority_then_oldest(store: SqlTaskStore) -> None:
    priorities = [0, 5, 0, 5, 1, -1]
    created = [await store.create(new_task(priority=p)) for p in priorities]
    expected = [created[1], created[3], created[4], created[0], created[2], created[5]]
    claimed = [await claim_one(store) for _ in priorities]
    assert [task.id for task in claimed] == [task.id for task in expected]
    assert await store.claim("w1", [QWEN], LEASE) is None


async def test_claim_only_takes_the_given_models(store: SqlTaskStore) -> None:
    text = await store.create(new_task(QWEN, priority=9))
    edit = await store.create(new_task(EDIT))
    assert await store.claim("w1", [], LEASE) is None
    assert (await claim_one(store, models=(EDIT,))).id == edit.id
    assert await store.claim("w1", [EDIT], LEASE) is None
    assert await store.claim("w1", [ModelName.QWEN_IMAGE_EDIT_PLUS], LEASE) is None
    assert (await claim_one(store, models=(QWEN,))).id == text.id


async def _claim_all(store: SqlTaskStore, worker: str) -> list[str]:
    ids = []
    while (task := await store.claim(worker, [QWEN], LEASE)) is not None:
        assert task.worker_id == worker
        ids.append(task.id)
    return ids


async def test_concurrent_claimers_on_one_store_take_each_task_once(store: SqlTaskStore) -> None:
    created = {(await store.create(new_task())).id for _ in range(20)}
    claimed = await asyncio.gather(*(_claim_all(store, f"w{n}") for n in range(4)))
    flat = [task_id for ids in claimed for task_id in ids]
    assert sorted(flat) == sorted(created)
    for task_id in created:
        task = await store.get(task_id)
        assert task.status is TaskStatus.RUNNING and task.attempts == 1


async def test_concurrent_claimers_on_two_stores_take_each_task_once(
    store: SqlTaskStore, other_store: SqlTaskStore
) -> None:
    created = {(await store.create(new_task())).id for _ in range(20)}
    stores = [store, other_store, store, other_store]
    claimed = await asyncio.gather(*(_claim_all(s, f"w{n}") for n, s in enumerate(stores)))
    flat = [task_id for ids in claimed for task_id in ids]
    assert sorted(flat) == sorted(created)
    owners = {task_id: f"w{n}" for n, ids in enumerate(claimed) for task_id in ids}
    for task_id in created:
        assert (await other_store.get(task_id)).worker_id == owners[task_id]


# -- batch claims -----------------------------------------------------------------------------------


def batchable(prompt: str = "a red fox", *, priority: int = 0, cfg: bool = True) -> NewTask:
    """A text-to-image task; those with the same `cfg` share a batch key."""
    request = make_request(QWEN, prompt, true_cfg_scale=4.0 if cfg else 1.0)
    assert request.batch_key is not None
    return new_task(request=request, priority=priority)


async def _ids(claims: Awaitable[list[Task]]) -> list[str]:
    return [task.id for task in await claims]


async def test_claim_batch_takes_the_next_task_and_due_partners_of_its_key(store: SqlTaskStore) -> None:
    backing_off = await store.create(batchable("backing off"))  # the oldest, but waiting out a retry
    await claim_one(store)
    await store.retry_later(backing_off.id, "w1", TaskError("storage_unavailable", "disk full"), 60)
    head = await store.create(batchable("head", priority=2))
    other_key = await store.create(batchable("no cfg", cfg=False))
    edit = await store.create(new_task(EDIT))
    older = await store.create(batchable("older partner"))
    urgent = await store.create(batchable("urgent partner", priority=1))
    newest = await store.create(batchable("newest partner"))
    assert head.request.batch_key == older.request.batch_key != other_key.request.batch_key

    claimed = await store.claim_batch("w2", (QWEN, EDIT), LEASE, limit=3)

    assert [task.id for task in claimed] == [head.id, urgent.id, older.id], "the claim's task first, then by its order"
    for task in claimed:
        assert (task.status, task.worker_id, task.attempts) == (TaskStatus.RUNNING, "w2", 1)
        assert task.started_at is not None and task.lease_expires_at == task.started_at + timedelta(seconds=LEASE)
        assert await store.get(task.id) == task
    left = [backing_off, other_key, edit, newest]
    assert {(await store.get(task.id)).status for task in left} == {TaskStatus.QUEUED}
    # What is left comes one batch key at a time: a task without a key alone, though others are queued.
    assert await _ids(store.claim_batch("w3", (QWEN, EDIT), LEASE, limit=3)) == [other_key.id]
    assert await _ids(store.claim_batch("w3", (QWEN, EDIT), LEASE, limit=3)) == [edit.id]
    assert await _ids(store.claim_batch("w3", (QWEN, EDIT), LEASE, limit=3)) == [newest.id]
    assert await store.claim_batch("w3", (QWEN, EDIT), LEASE, limit=3) == [], "backing_off is not due yet"


async def test_claim_batch_of_one_is_claim(store: SqlTaskStore) -> None:
    first, second = [await store.create(batchable(f"fox {n}")) for n in range(2)]
    assert await _ids(store.claim_batch("w1", (QWEN,), LEASE, limit=1)) == [first.id]
    assert await store.claim_batch("w1", (EDIT,), LEASE, limit=4) == [], "only the models given"
    assert await _ids(store.claim_batch("w1", (QWEN,), LEASE, limit=4)) == [second.id]
    assert await store.claim_batch("w1", (QWEN,), LEASE, limit=4) == []


async def test_tasks_without_a_batch_key_are_never_claimed_together(store: SqlTaskStore) -> None:
    edits = [await store.create(new_task(EDIT)) for _ in range(3)]
    for edit in edits:
        assert await _ids(store.claim_batch("w1", (EDIT,), LEASE, limit=3)) == [edit.id]


async def _claim_batches(store: SqlTaskStore, worker: str) -> list[str]:
    ids: list[str] = []
    while claimed := await store.claim_batch(worker, [QWEN], LEASE, limit=3):
        assert {task.worker_id for task in claimed} == {worker} and len(claimed) <= 3
        ids += [task.id for task in claimed]
    return ids


@pytest.mark.parametrize("two_stores", [False, True], ids=["one store", "two stores"])
async def test_concurrent_batch_claims_take_each_task_once(
    store: SqlTaskStore, other_store: SqlTaskStore, two_stores: bool
) -> None:
    created = {(await store.create(batchable(f"fox {n}", cfg=n % 3 > 0))).id for n in range(30)}
    stores = [store, other_store] * 2 if two_stores else [store] * 4
    claimed = await asyncio.gather(*(_claim_batches(s, f"w{n}") for n, s in enumerate(stores)))
    flat = [task_id for ids in claimed for task_id in ids]
    assert sorted(flat) == sorted(created)
    owners = {task_id: f"w{n}" for n, ids in enumerate(claimed) for task_id in ids}
    for task_id in created:
        task = await other_store.get(task_id)
        assert (task.status, task.worker_id, task.attempts) == (TaskStatus.RUNNING, owners[task_id], 1)


# -- terminal states and leases ---------------------------------------------------------------------


def worker_calls(store: SqlTaskStore, task_id: str, worker_id: str) -> list[Callable[[], Awaitable[object]]]:
    """Every call a worker makes on a task it holds."""
    return [
        lambda: store.heartbeat(task_id, worker_id, LEASE, Progress(1, 1)),
        lambda: store.complete(task_id, worker_id, [image(1)]),
        lambda: store.fail(task_id, worker_id, TaskError("x", "y")),
        lambda: store.finish_canceled(task_id, worker_id),
        lambda: store.release(task_id, worker_id),
    ]


async def test_terminal_states_never_change(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    await claim_one(store)
    done = await store.complete(created.id, "w1", [image()])
    assert await store.request_cancel(created.id) == done
    for change in worker_calls(store, created.id, "w1"):
        with pytest.raises(TaskConflict):
            await change()
    assert await store.requeue_expired(done.updated_at + timedelta(days=1)) == []
    assert await store.get(created.id) == done


async def test_complete_after_cancel_conflicts(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    await claim_one(store)
    await store.request_cancel(created.id)
    canceled = await store.finish_canceled(created.id, "w1")
    assert canceled.status is TaskStatus.CANCELED
    assert canceled.finished_at is not None
    with pytest.raises(TaskConflict):
        await store.complete(created.id, "w1", [image()])
    assert await store.get(created.id) == canceled


async def test_cancel_queued_task_is_immediate(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    canceled = await store.request_cancel(created.id)
    assert canceled.status is TaskStatus.CANCELED
    assert canceled.finished_at is not None and canceled.finished_at > created.created_at
    assert canceled.started_at is None
    assert await store.claim("w1", [QWEN], LEASE) is None
    assert await store.request_cancel(created.id) == canceled
    with pytest.raises(TaskNotFound):
        await store.request_cancel("task_missing")


async def test_cancel_running_task_is_requested_and_heartbeat_reports_it(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    await claim_one(store)
    assert await store.heartbeat(created.id, "w1", LEASE, Progress(1, 2)) is False
    requested = await store.request_cancel(created.id)
    assert requested.status is TaskStatus.RUNNING
    assert requested.cancel_requested
    assert requested.finished_at is None
    assert await store.request_cancel(created.id) == requested
    assert await store.heartbeat(created.id, "w1", LEASE, Progress(2, 2)) is True
    canceled = await store.finish_canceled(created.id, "w1")
    assert canceled.status is TaskStatus.CANCELED
    assert canceled.lease_expires_at is None


async def test_worker_calls_by_another_worker_raise_lease_lost(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    claimed = await claim_one(store, "w1")
    for change in worker_calls(store, created.id, "w2"):
        with pytest.raises(LeaseLost):
            await change()
    assert await store.get(created.id) == claimed
    with pytest.raises(TaskNotFound):
        await store.heartbeat("task_missing", "w1", LEASE, None)
    with pytest.raises(TaskNotFound):
        await store.complete("task_missing", "w1", [])


async def test_lease_is_lost_after_requeue(store: SqlTaskStore, clock: FakeClock) -> None:
    created = await store.create(new_task())
    await claim_one(store, "w1")
    requeued = await store.requeue_expired(clock.advance(LEASE + 1))
    assert [task.id for task in requeued] == [created.id]
    with pytest.raises(LeaseLost):
        await store.heartbeat(created.id, "w1", LEASE, None)
    await claim_one(store, "w2")
    with pytest.raises(LeaseLost):
        await store.complete(created.id, "w1", [image()])
    assert (await store.complete(created.id, "w2", [image()])).status is TaskStatus.SUCCEEDED
    with pytest.raises(LeaseLost):  # finished by another worker: w1 still just lost it
        await store.heartbeat(created.id, "w1", LEASE, None)


async def test_release_requeues_without_counting_the_attempt(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    first = await claim_one(store, "w1")
    await store.heartbeat(created.id, "w1", LEASE, Progress(3, 4))
    released = await store.release(created.id, "w1")
    assert released.status is TaskStatus.QUEUED
    assert released.attempts == 0
    assert released.worker_id is None and released.lease_expires_at is None
    assert released.progress.step == 0
    assert released.finished_at is None
    assert await store.queue_position(created.id) == 0
    again = await claim_one(store, "w2")
    assert (again.id, again.attempts, again.worker_id) == (created.id, 1, "w2")
    assert again.started_at == first.started_at


async def test_release_of_a_task_whose_cancel_was_requested_cancels_it(store: SqlTaskStore) -> None:
    created = await store.create(new_task())
    await claim_one(store)
    await store.request_cancel(created.id)
    released = await store.release(created.id, "w1")
    assert released.status is TaskStatus.CANCELED
    assert released.finished_at is not None
    assert await store.claim("w1", [QWEN], LEASE) is None


async def test_requeue_expired_requeues_then_fails_after_max_attempts(store: SqlTaskStore, clock: FakeClock) -> None:
    created = await store.create(new_task(max_attempts=2))
    healthy = await store.create(new_task(priority=-1))
    await claim_one(store, "w1")
    assert await store.requeue_expired(clock()) == []
    assert (await store.get(created.id)).status is TaskStatus.RUNNING

    [requeued] = await store.requeue_expired(clock.advance(LEASE + 1))
    assert (requeued.id, requeued.status, requeued.attempts) == (created.id, TaskStatus.QUEUED, 1)
    assert requeued.worker_id is None and requeued.lease_expires_at is None and requeued.error is None
    assert await store.get(created.id) == requeued

    assert (await claim_one(store, "w2")).attempts == 2
    assert (await claim_one(store, "w3")).id == healthy.id
    await store.heartbeat(healthy.id, "w3", LEASE * 10, None)
    [failed] = await store.requeue_expired(clock.advance(LEASE + 1))
    assert failed.id == created.id
    assert failed.status is TaskStatus.FAILED
    assert failed.error == TaskError("worker_lost", "the worker running this task stopped responding 2 times")
    assert failed.finished_at is not None and failed.lease_expires_at is None
    assert failed.attempts == 2
    assert (await store.get(healthy.id)).status is TaskStatus.RUNNING
    assert await store.requeue_expired(clock.advance(LEASE + 1)) == []


async def test_requeue_expired_cancels_a_task_whose_cancel_was_requested(store: SqlTaskStore, clock: FakeClock) -> None:
    created = await store.create(new_task())
    await claim_one(store)
    await store.request_cancel(created.id)
    [canceled] = await store.requeue_expired(clock.advance(LEASE + 1))
    assert canceled.status is TaskStatus.CANCELED
    assert canceled.finished_at is not None
    assert await store.claim("w1", [QWEN], LEASE) is None


# -- listing and queue position ---------------------------------------------------------------------


async def _list_all(
    store: SqlTaskStore, *, status: TaskStatus | None = None, owner: str | None = None
) -> tuple[list[str], int]:
    """Every task id, page by page (3 a page), and the number of pages."""
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_tasks(status=status, owner=owner, limit=3, cursor=cursor)
        pages += 1
        ids += [task.id for task in page.tasks]
        if page.next_cursor is None:
            return ids, pages
        cursor = page.next_cursor


async def test_list_tasks_newest_first_with_cursor(store: SqlTaskStore) -> None:
    created = [await store.create(new_task(owner="a" if n % 2 else "b")) for n in range(7)]
    newest_first = [task.id for task in reversed(created)]
    assert await _list_all(store) == (newest_first, 3)
    first = await store.list_tasks(limit=7)
    assert [task.id for task in first.tasks] == newest_first and first.next_cursor is None
    assert await _list_all(store, owner="a") == ([t.id for t in reversed(created) if t.owner == "a"], 1)
    assert (await store.list_tasks(owner="nobody")).tasks == []


async def test_list_tasks_filters_by_status(store: SqlTaskStore) -> None:
    created = [await store.create(new_task()) for _ in range(5)]
    await store.request_cancel(created[1].id)
    await store.request_cancel(created[3].id)
    canceled = await store.list_tasks(status=TaskStatus.CANCELED)
    assert [task.id for task in canceled.tasks] == [created[3].id, created[1].id]
    assert all(task.status is TaskStatus.CANCELED for task in canceled.tasks)
    queued, _ = await _list_all(store, status=TaskStatus.QUEUED)
    assert queued == [created[4].id, created[2].id, created[0].id]


async def test_list_tasks_pages_through_equal_creation_times(database_url: str) -> None:
    store = SqlTaskStore.open(database_url, clock=FakeClock(tick=timedelta(0)))
    await store.start()
    try:
        ids = [f"task_{n:02d}" for n in range(8)]
        for task_id in ids:
            await store.create(new_task(task_id=task_id))
        assert await _list_all(store) == (list(reversed(ids)), 3)
    finally:
        await store.close()


async def test_list_tasks_rejects_a_bad_cursor_or_limit(store: SqlTaskStore) -> None:
    for cursor in ("not a cursor", "bm9wZQ", "WzEsMl0"):
        with pytest.raises(InvalidParameter) as info:
            await store.list_tasks(cursor=cursor)
        assert info.value.param == "cursor"
    with pytest.raises(InvalidParameter):
        await store.list_tasks(limit=0)


async def test_queue_position_counts_tasks_claimed_before_it(store: SqlTaskStore) -> None:
    a = await store.create(new_task(QWEN))
    b = await store.create(new_task(EDIT))
    c = await store.create(new_task(QWEN, priority=5))
    d = await store.create(new_task(QWEN))
    positions = {task.id: await store.queue_position(task.id) for task in (a, b, c, d)}
    assert positions == {c.id: 0, a.id: 1, b.id: 2, d.id: 3}
    await claim_one(store, models=(QWEN,))  # takes c
    assert await store.queue_position(c.id) is None
    assert [await store.queue_position(t.id) for t in (a, b, d)] == [0, 1, 2]
    await store.request_cancel(b.id)
    assert await store.queue_position(b.id) is None
    assert await store.queue_position(d.id) == 1
    with pytest.raises(TaskNotFound):
        await store.queue_position("task_missing")


async def test_get_with_position_reads_both_at_once(store: SqlTaskStore) -> None:
    first, second = await store.create(new_task(QWEN)), await store.create(new_task(QWEN))
    assert await store.get_with_position(second.id) == (await store.get(second.id), 1)
    claimed = await claim_one(store, models=(QWEN,))
    assert claimed.id == first.id
    task, position = await store.get_with_position(first.id)
    assert (task.status, position) == (TaskStatus.RUNNING, None)
    assert (await store.get_with_position(second.id))[1] == 0
    with pytest.raises(TaskNotFound):
        await store.get_with_position("task_missing")


# -- retention --------------------------------------------------------------------------------------


async def test_delete_finished_before_deletes_only_old_terminal_tasks(store: SqlTaskStore, clock: FakeClock) -> None:
    done = await store.create(new_task())
    await claim_one(store)
    done = await store.complete(done.id, "w1", [image()])
    canceled = await store.request_cancel((await store.create(new_task())).id)
    running = await store.create(new_task(priority=1))
    await claim_one(store)
    queued = await store.create(new_task())
    cutoff = clock()
    late = await store.request_cancel((await store.create(new_task())).id)

    assert done.finished_at is not None
    assert await store.delete_finished_before(done.finished_at - timedelta(seconds=1)) == []
    deleted = await store.delete_finished_before(cutoff)
    assert sorted(deleted, key=lambda t: t.id) == sorted([done, canceled], key=lambda t: t.id)
    for task in (done, canceled):
        with pytest.raises(TaskNotFound):
            await store.get(task.id)
    for task in (running, queued, late):
        await store.get(task.id)
    assert await store.delete_finished_before(cutoff) == []


# -- workers ----------------------------------------------------------------------------------------


def worker(worker_id: str, seen: datetime, state: str = "ready", models: tuple[ModelName, ...] = (QWEN,)) -> WorkerInfo:
    return WorkerInfo(id=worker_id, hostname="gpu-1", pid=123, models=models, state=state, last_seen=seen)


async def test_worker_rows(store: SqlTaskStore, clock: FakeClock) -> None:
    start = clock()
    await store.announce_worker(worker("w1", start, state="loading", models=(QWEN, EDIT)))
    await store.announce_worker(worker("w2", start))
    later = clock.advance(60)
    await store.announce_worker(worker("w1", later, state="ready", models=(EDIT,)))
    assert await store.live_workers(start) == [worker("w1", later, models=(EDIT,)), worker("w2", start)]
    assert await store.live_workers(later) == [worker("w1", later, models=(EDIT,))]
    await store.forget_worker("w1")
    await store.forget_worker("w-unknown")
    assert await store.live_workers(start) == [worker("w2", start)]


async def test_concurrent_announces_of_one_worker_keep_one_row(
    store: SqlTaskStore, other_store: SqlTaskStore, clock: FakeClock
) -> None:
    seen = clock()
    await asyncio.gather(*(s.announce_worker(worker("w1", seen)) for s in [store, other_store] * 4))
    assert await store.live_workers(seen) == [worker("w1", seen)]


# -- schema -----------------------------------------------------------------------------------------


def _schema_differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _columns(connection: Connection) -> dict[str, dict[str, bool]]:
    inspector = inspect(connection)
    return {
        table: {column["name"]: column["nullable"] for column in inspector.get_columns(table)}
        for table in metadata.tables
    }


async def test_migrations_create_the_schema_of_schema_py(store: SqlTaskStore, database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_differences) == []
            columns = await conn.run_sync(_columns)
            revision = await conn.run_sync(_current_revision)
    finally:
        await engine.dispose()
    expected = {
        name: {column.name: bool(column.nullable) for column in table.columns}
        for name, table in metadata.tables.items()
    }
    assert columns == expected
    assert revision == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_start_on_a_migrated_database_keeps_its_tasks(store: SqlTaskStore, database_url: str) -> None:
    created = await store.create(new_task())
    again = SqlTaskStore.open(database_url)
    await again.start()
    try:
        assert await again.get(created.id) == created
    finally:
        await again.close()


async def test_stores_starting_at_once_on_a_new_database_both_start(database_url: str) -> None:
    stores = [SqlTaskStore.open(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        created = await stores[0].create(new_task())
        assert await stores[2].get(created.id) == created
    finally:
        for store in stores:
            await store.close()


async def test_a_store_that_is_not_started_says_so(database_url: str) -> None:
    with pytest.raises(RuntimeError, match="start"):
        await SqlTaskStore.open(database_url).get("task_x")


# -- SQLite only (tasks/sqlite.py) -------------------------------------------------------------------


def sqlite_path(database_url: str) -> str:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        pytest.skip("SQLite only")
    return url.database or ""


async def test_sqlite_database_uses_wal(store: SqlTaskStore, database_url: str) -> None:
    with closing(sqlite3.connect(sqlite_path(database_url))) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_reads_do_not_wait_for_a_writer(store: SqlTaskStore, database_url: str) -> None:
    created = await store.create(new_task())
    with closing(sqlite3.connect(sqlite_path(database_url), isolation_level=None)) as raw:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("UPDATE tasks SET priority = 7")
        assert await asyncio.wait_for(store.get(created.id), 5) == created
        assert (await asyncio.wait_for(store.list_tasks(), 5)).tasks == [created]
        assert await asyncio.wait_for(store.queue_position(created.id), 5) == 0
        raw.execute("ROLLBACK")


async def test_sqlite_writes_wait_for_the_lock_instead_of_failing(store: SqlTaskStore, database_url: str) -> None:
    with closing(sqlite3.connect(sqlite_path(database_url), isolation_level=None)) as raw:
        raw.execute("BEGIN IMMEDIATE")
        creating = asyncio.create_task(store.create(new_task()))
        await asyncio.sleep(0.3)
        assert not creating.done()
        raw.execute("COMMIT")
        created = await asyncio.wait_for(creating, 5)
    assert await store.get(created.id) == created


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:", "sqlite://"])
async def test_sqlite_in_memory_database_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        await SqlTaskStore.open(url).start()


async def test_sqlite_url_without_driver_gets_the_async_one(tmp_path: Path) -> None:
    store = SqlTaskStore.open(f"sqlite:///{tmp_path / 'a' / 'b' / 'tasks.db'}")
    await store.start()
    try:
        created = await store.create(new_task())
        assert await store.get(created.id) == created
    finally:
        await store.close()
    assert (tmp_path / "a" / "b" / "tasks.db").is_file()


# -- concurrency ------------------------------------------------------------------------------------


async def _api_side(store: SqlTaskStore, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        task = await store.create(new_task())
        ids.append(task.id)
        await store.get(task.id)
        await store.list_tasks(limit=5)
        await store.queue_position(task.id)
    return ids


async def _worker_side(store: SqlTaskStore, worker_id: str, stop: asyncio.Event) -> list[str]:
    done: list[str] = []
    while True:
        task = await store.claim(worker_id, [QWEN], LEASE)
        if task is None:
            if stop.is_set():
                return done
            await asyncio.sleep(0.002)  # a real worker polls less often
            continue
        for step in range(3):
            assert await store.heartbeat(task.id, worker_id, LEASE, Progress(step + 1, 3)) is False
        await store.complete(task.id, worker_id, [image()])
        done.append(task.id)


async def test_two_stores_under_concurrent_load_never_lock(store: SqlTaskStore, other_store: SqlTaskStore) -> None:
    stop = asyncio.Event()
    workers = [asyncio.create_task(_worker_side(s, f"w{n}", stop)) for n, s in enumerate([store, other_store] * 2)]
    created = await asyncio.gather(_api_side(store, 15), _api_side(other_store, 15))
    stop.set()
    finished = await asyncio.gather(*workers)
    all_created = sorted(task_id for ids in created for task_id in ids)
    assert sorted(task_id for ids in finished for task_id in ids) == all_created
    succeeded, _ = await _list_all(store, status=TaskStatus.SUCCEEDED)
    assert sorted(succeeded) == all_created


async def test_heartbeat_records_previews_and_they_outlive_the_run(store: SqlTaskStore) -> None:
    await store.create(new_task(QWEN))
    task = await claim_one(store)
    first = StoredImage(f"{task.id}/0-partial0.png", 0, 1, 64, 64, OutputFormat.PNG, 10, "ab", partial_index=0)
    second = StoredImage(f"{task.id}/0-partial1.png", 0, 1, 64, 64, OutputFormat.PNG, 10, "cd", partial_index=1)
    await store.heartbeat(task.id, "w1", 30, Progress(1, 4), previews=[first])
    assert (await store.get(task.id)).previews == (first,)
    await store.heartbeat(task.id, "w1", 30, Progress(2, 4))  # no previews given: kept as they were
    await store.heartbeat(task.id, "w1", 30, Progress(3, 4), previews=[first, second])
    await store.complete(task.id, "w1", [image()])
    done = await store.get(task.id)
    assert done.previews == (first, second)
    assert done.results == (image(),)


async def test_an_idempotency_key_returns_the_first_task_for_the_same_request(store: SqlTaskStore) -> None:
    from qwen_image_server.tasks.model import Idempotency, NewTask

    request = make_request()
    first = await store.create(NewTask(request, owner="k1", idempotency=Idempotency("abc", "f1")))
    again = await store.create(NewTask(request, owner="k1", idempotency=Idempotency("abc", "f1")))
    assert again.id == first.id
    other_owner = await store.create(NewTask(request, owner="k2", idempotency=Idempotency("abc", "f1")))
    assert other_owner.id != first.id, "keys are per owner"
    assert len((await store.list_tasks()).tasks) == 2


async def test_an_idempotency_key_reused_with_another_request_is_refused(store: SqlTaskStore) -> None:
    from qwen_image_server.errors import IdempotencyKeyReused
    from qwen_image_server.tasks.model import Idempotency, NewTask

    await store.create(NewTask(make_request(), idempotency=Idempotency("abc", "f1")))
    with pytest.raises(IdempotencyKeyReused) as caught:
        await store.create(NewTask(make_request(), idempotency=Idempotency("abc", "f2")))
    assert caught.value.status == 422
    assert len((await store.list_tasks()).tasks) == 1


async def test_idempotency_keys_expire_after_a_day(store: SqlTaskStore, clock: FakeClock) -> None:
    from qwen_image_server.tasks.model import Idempotency, NewTask

    first = await store.create(NewTask(make_request(), idempotency=Idempotency("abc", "f1")))
    clock.advance(25 * 3600)
    later = await store.create(NewTask(make_request(), idempotency=Idempotency("abc", "f2")))
    assert later.id != first.id


async def test_concurrent_uses_of_one_key_make_one_task(store: SqlTaskStore) -> None:
    from qwen_image_server.tasks.model import Idempotency, NewTask

    request = make_request()
    made = await asyncio.gather(
        *(store.create(NewTask(request, idempotency=Idempotency("same", "f"))) for _ in range(8))
    )
    assert len({task.id for task in made}) == 1


async def test_concurrent_uses_of_one_key_from_two_processes_make_one_task(
    store: SqlTaskStore, other_store: SqlTaskStore
) -> None:
    """The race seen on PostgreSQL: a transaction that read no key before a concurrent one committed
    must not replace the winner's key with its own (several rounds: the race is timing-dependent)."""
    from qwen_image_server.tasks.model import Idempotency, NewTask

    request = make_request()
    for round_number in range(6):
        key = Idempotency(f"round-{round_number}", "f")
        made = await asyncio.gather(
            *(side.create(NewTask(request, idempotency=key)) for side in [store, other_store] * 6)
        )
        assert len({task.id for task in made}) == 1, f"round {round_number}: {len({t.id for t in made})} tasks"
    assert len((await store.list_tasks(limit=100)).tasks) == 6


async def test_replay_finds_the_task_of_a_used_key(store: SqlTaskStore, clock: FakeClock) -> None:
    from qwen_image_server.errors import IdempotencyKeyReused
    from qwen_image_server.tasks.model import Idempotency, NewTask

    assert await store.replay("k1", Idempotency("abc", "f1")) is None
    first = await store.create(NewTask(make_request(), owner="k1", idempotency=Idempotency("abc", "f1")))
    found = await store.replay("k1", Idempotency("abc", "f1"))
    assert found is not None and found.id == first.id
    assert await store.replay("k2", Idempotency("abc", "f1")) is None, "keys are per owner"
    with pytest.raises(IdempotencyKeyReused):
        await store.replay("k1", Idempotency("abc", "f2"))
    clock.advance(25 * 3600)
    assert await store.replay("k1", Idempotency("abc", "f1")) is None, "expired"
