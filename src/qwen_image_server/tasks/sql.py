"""`SqlTaskStore`: the task store and queue on SQLAlchemy's asyncio Core (SQLite or PostgreSQL).

The SQL here is portable; what SQLite needs beyond it lives in tasks/sqlite.py, and the engines,
migrations and error translation in tasks/database.py (`Database`: a read or write the database
cannot take now raises `StoreUnavailable`). Every state change is
one conditional UPDATE (`WHERE id = ... AND status = ...`, and for a worker `AND worker_id = ...`)
whose result decides: no row changed means the transition no longer applies, and nothing changed.

Errors of the worker-side calls, when the UPDATE changed nothing:
- `TaskNotFound`: no such task.
- `TaskConflict`: the task is terminal and this worker was the one that finished it (a second
  complete/fail/finish_canceled, e.g. complete after finish_canceled).
- `LeaseLost`: otherwise. The worker does not hold the task: it was requeued (and maybe claimed by
  another worker), canceled while queued, or finished without this worker (failed as `worker_lost`).

Every transition that makes a task terminal also records its callback (tasks/outbox.py) in the same
transaction. Every transition also announces the tasks it changed: after commit to this process's
waiters (`TaskChanges`), and on PostgreSQL, in the transaction, to every process by NOTIFY
(tasks/notify.py: `_announce` here, one call per transition).

The claim selects the next queued task with `FOR UPDATE SKIP LOCKED` and updates it in the same
transaction: on PostgreSQL concurrent claimers skip each other's row; on SQLite the clause is dropped
and BEGIN IMMEDIATE serialises the claimers. A batch claim (`claim_batch`) selects that task, then,
the same way, the queued tasks that share its batch key, and leases them all with one UPDATE.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from qwen_image_server.domain import ModelName
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.report import TaskReport
from qwen_image_server.tasks import counted
from qwen_image_server.tasks.database import Database
from qwen_image_server.tasks.idempotency import check_fingerprint, claim_key, key_row, task_holding_key
from qwen_image_server.tasks.inputs import attach_inputs, delete_inputs_of, store_inputs
from qwen_image_server.tasks.model import (
    IDEMPOTENCY_TTL_SECONDS,
    TERMINAL_STATUSES,
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
    utcnow,
)
from qwen_image_server.tasks.notify import notify_changed
from qwen_image_server.tasks.outbox import delete_callbacks_of, enqueue_final_callback
from qwen_image_server.tasks.schema import idempotency_keys, tasks, workers
from qwen_image_server.tasks.sql_rows import (
    Row,
    decode_cursor,
    encode_cursor,
    new_task_row,
    results_to_json,
    task_from_row,
    worker_from_row,
    worker_row,
)
from qwen_image_server.tasks.store import LeaseLost, TaskConflict, TaskNotFound, TaskStore

QUEUED = TaskStatus.QUEUED.value
RUNNING = TaskStatus.RUNNING.value
TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)
WORKER_LOST = "worker_lost"
_NO_LEASE: dict[str, Any] = {"worker_id": None, "lease_expires_at": None}


class SqlTaskStore:
    """The `TaskStore` on a `Database` (tasks/database.py), which it may share with the key and
    callback stores. `clock` gives the time of every change (tests pass a fake one). Its reads and
    writes raise `StoreUnavailable` when the database cannot take them now."""

    def __init__(self, database: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._database = database
        self._clock = clock
        self._changes = database.changes

    @classmethod
    def open(cls, database_url: str, *, clock: Callable[[], datetime] = utcnow, listen: bool = True) -> SqlTaskStore:
        """A store on a database of its own (see `Database` for `listen`)."""
        return cls(Database(database_url, listen=listen), clock=clock)

    @property
    def database(self) -> Database:
        return self._database

    async def start(self) -> None:
        await self._database.start()

    async def close(self) -> None:
        await self._database.close()

    def on_task_queued(self, hook: Callable[[], None]) -> None:
        """Call `hook` (on the event loop) when another process queues a task (PostgreSQL only: on
        SQLite, and for tasks queued in this process, whoever queues wakes the worker itself)."""
        self._changes.on_queued(hook)

    # -- API side --------------------------------------------------------------------------------

    async def create(self, new: NewTask) -> Task:
        """A new queued task; with `new.idempotency`, the task created earlier (within 24 h) for
        the same owner, key and request, or `IdempotencyKeyReused` for another request. The key is
        claimed in the task's transaction (tasks/idempotency.py): concurrent duplicates get one task."""
        now = self._clock()
        values = new_task_row(new, now)

        def create(conn: Connection) -> Task:
            if new.idempotency is not None and not claim_key(conn, new, now):
                return task_from_row(_required_row(conn, task_holding_key(conn, new)))
            conn.execute(insert(tasks), values)  # parameters, not .values(): a cached statement
            store_inputs(conn, new.id, new.request)
            _announce(conn, [values])
            return task_from_row(values, request=new.request.without_inputs())

        try:
            task = await self._database.run_write(create)
        except IntegrityError as exc:
            raise TaskConflict(f"a task with id {new.id!r} already exists") from exc
        return counted.created(task) if task.id == new.id else task  # else: the key's earlier task

    async def replay(self, owner: str | None, idempotency: Idempotency) -> Task | None:
        """The task an unexpired use of this key (with the same request) made, or None; raises
        `IdempotencyKeyReused` when the key came with another request. Lets a replay skip the
        limits that a new task has to pass."""
        now = self._clock()

        def replay(conn: Connection) -> Task | None:
            row = key_row(conn, owner, idempotency.key, now)
            if row is None:
                return None
            check_fingerprint(row, idempotency)
            return task_from_row(_required_row(conn, str(row["task_id"])))

        return await self._database.run_read(replay)

    async def get(self, task_id: str) -> Task:
        row = await self._database.run_read(lambda conn: _task_row(conn, task_id))
        if row is None:
            raise TaskNotFound(f"there is no task {task_id!r}")
        return task_from_row(row)

    async def wait_for_change(self, task_id: str, timeout: float) -> None:
        """Until the task changes (by this store; on PostgreSQL by any process on the database,
        while the listener is up), or `timeout` seconds pass."""
        await self._changes.wait(task_id, timeout)

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        if limit < 1:
            raise InvalidParameter(f"limit must be at least 1, got {limit}", param="limit")
        query = select(tasks).order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        if owner is not None:
            query = query.where(tasks.c.owner == owner)
        if cursor is not None:
            created_at, last_id = decode_cursor(cursor)
            query = query.where(_before(created_at, last_id))
        rows = await self._database.run_read(lambda conn: conn.execute(query).mappings().all())
        page = [task_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return TaskPage(tasks=page, next_cursor=next_cursor)

    async def count_tasks(
        self,
        *,
        owner: str | None = None,
        statuses: Collection[TaskStatus] | None = None,
        created_since: datetime | None = None,
    ) -> int:
        query = select(func.count()).select_from(tasks)
        if owner is not None:
            query = query.where(tasks.c.owner == owner)
        if statuses is not None:
            query = query.where(tasks.c.status.in_([status.value for status in statuses]))
        if created_since is not None:
            query = query.where(tasks.c.created_at >= created_since)
        return int(await self._database.run_read(lambda conn: conn.execute(query).scalar_one()))

    async def get_with_position(self, task_id: str) -> tuple[Task, int | None]:
        query = _TASK_AND_QUEUE_POSITION
        row = await self._database.run_read(lambda conn: conn.execute(query, {"task_id": task_id}).mappings().first())
        if row is None:
            raise TaskNotFound(f"there is no task {task_id!r}")
        return task_from_row(row), None if row["ahead"] is None else int(row["ahead"])

    async def queue_position(self, task_id: str) -> int | None:
        row = await self._database.run_read(lambda conn: conn.execute(_QUEUE_POSITION, {"task_id": task_id}).first())
        if row is None:
            raise TaskNotFound(f"there is no task {task_id!r}")
        return None if row.ahead is None else int(row.ahead)

    async def active_tasks(self) -> list[ActiveTasks]:
        rows = await self._database.run_read(lambda conn: conn.execute(_ACTIVE_TASKS).all())
        return [ActiveTasks(ModelName(row.model), TaskStatus(row.status), row.tasks, row.oldest) for row in rows]

    async def request_cancel(self, task_id: str) -> Task:
        now = self._clock()

        def cancel(conn: Connection) -> tuple[Row | None, bool]:
            canceled = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status == QUEUED)
                .values(status=TaskStatus.CANCELED.value, finished_at=now, updated_at=now)
                .returning(*tasks.c)
            )
            row: Row | None = canceled.mappings().first()
            ended = row is not None
            if row is not None:
                _ended(conn, row, now)
            else:
                conn.execute(
                    update(tasks)
                    .where(tasks.c.id == task_id, tasks.c.status == RUNNING, tasks.c.cancel_requested.is_(False))
                    .values(cancel_requested=True, updated_at=now)
                )
                row = _task_row(conn, task_id)
            if row is not None:
                _announce(conn, [row])
            return row, ended

        row, ended = await self._database.run_write(cancel)
        if row is None:
            raise TaskNotFound(f"there is no task {task_id!r}")
        self._changes.changed(task_id)
        return counted.ended(task_from_row(row)) if ended else task_from_row(row)

    # -- worker side -----------------------------------------------------------------------------

    async def claim(self, worker_id: str, models: Collection[ModelName], lease_seconds: float) -> Task | None:
        claimed = await self.claim_batch(worker_id, models, lease_seconds, limit=1)
        return claimed[0] if claimed else None

    async def claim_batch(
        self, worker_id: str, models: Collection[ModelName], lease_seconds: float, *, limit: int
    ) -> list[Task]:
        """The task `claim` would take, then up to `limit - 1` due queued partners of its batch key
        (in the same order), all leased to `worker_id` by one UPDATE in the claim's transaction."""
        names = sorted({ModelName(model).value for model in models})
        if not names or limit < 1:
            return []
        now = self._clock()
        queued = (tasks.c.status == QUEUED, tasks.c.model.in_(names), _due(now))

        def claim(conn: Connection) -> tuple[list[str], Sequence[Row]]:
            head = conn.execute(_next_queued(*queued).add_columns(tasks.c.batch_key).limit(1)).first()
            if head is None:
                return [], []
            task_ids = [head.id]
            if head.batch_key is not None and limit > 1:
                partners = _next_queued(*queued, tasks.c.batch_key == head.batch_key, tasks.c.id != head.id)
                task_ids += conn.execute(partners.limit(limit - 1)).scalars().all()
            rows = conn.execute(_lease(task_ids, worker_id, now, lease_seconds)).mappings().all()
            _announce(conn, rows)
            return task_ids, rows

        task_ids, rows = await self._database.run_write(claim)
        for row in rows:
            self._changes.changed(row["id"])
        order = {task_id: position for position, task_id in enumerate(task_ids)}
        claimed = [task_from_row(row) for row in sorted(rows, key=lambda row: order[row["id"]])]
        counted.claimed(claimed)
        return claimed

    async def with_inputs(self, task: Task) -> Task:
        """The claimed task with the bytes of its input images, which task reads leave out."""
        if task.request.has_inputs_attached:
            return task
        request = await self._database.run_read(lambda conn: attach_inputs(conn, task.id, task.request))
        return replace(task, request=request)

    async def heartbeat(
        self,
        task_id: str,
        worker_id: str,
        lease_seconds: float,
        progress: Progress | None,
        previews: Sequence[StoredImage] | None = None,
    ) -> bool:
        now = self._clock()
        values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
        if progress is not None:
            values.update(progress_step=progress.step, progress_total=progress.total)
        if previews is not None:
            values["previews_json"] = results_to_json(previews)

        def beat(conn: Connection) -> bool:
            result = conn.execute(
                update(tasks).where(*_held(task_id, worker_id)).values(values).returning(tasks.c.cancel_requested)
            )
            cancel_requested = result.scalar_one_or_none()
            if cancel_requested is None:
                raise _not_held(conn, task_id, worker_id)
            notify_changed(conn, [task_id])
            return bool(cancel_requested)

        cancel_requested = await self._database.run_write(beat)
        self._changes.changed(task_id)
        return bool(cancel_requested)

    async def complete(
        self, task_id: str, worker_id: str, results: Sequence[StoredImage], report: TaskReport | None = None
    ) -> Task:
        return await self._finish_held(
            task_id,
            worker_id,
            status=TaskStatus.SUCCEEDED.value,
            results_json=results_to_json(results),
            progress_step=tasks.c.progress_total,
            report_json=report.to_json() if report is not None else None,
        )

    async def fail(self, task_id: str, worker_id: str, error: TaskError) -> Task:
        return await self._finish_held(
            task_id, worker_id, status=TaskStatus.FAILED.value, error_code=error.code, error_message=error.message
        )

    async def finish_canceled(self, task_id: str, worker_id: str) -> Task:
        return await self._finish_held(task_id, worker_id, status=TaskStatus.CANCELED.value)

    async def retry_later(self, task_id: str, worker_id: str, error: TaskError, delay_seconds: float) -> Task:
        """A run that failed for a transient reason (storage full, database busy): back to the queue,
        not to be claimed for `delay_seconds`, while the task has attempts left (the claim counted
        this one); else it fails with `error`. A task whose cancel was requested is canceled."""
        now = self._clock()

        def retry(conn: Connection) -> Row:
            held = _held_row(conn, task_id, worker_id)
            values = _after_transient_failure(held, error, now, delay_seconds)
            return _transition(conn, task_id, worker_id, {**values, "updated_at": now, **_NO_LEASE}, now)

        row = await self._database.run_write(retry)
        self._changes.changed(task_id)
        return counted.ended(task_from_row(row))

    async def release(self, task_id: str, worker_id: str) -> Task:
        """Back to the queue, the attempt not counted; a task whose cancel was requested is canceled
        instead (nobody wants it run again)."""
        now = self._clock()
        values = {
            "status": _if_cancel_requested(TaskStatus.CANCELED.value, QUEUED, tasks.c.status),
            "finished_at": _if_cancel_requested(now, None, tasks.c.finished_at),
            "attempts": tasks.c.attempts - 1,
            "progress_step": 0,
            "updated_at": now,
            **_NO_LEASE,
        }
        row = await self._database.run_write(lambda conn: _transition(conn, task_id, worker_id, values, now))
        self._changes.changed(task_id)
        return counted.ended(task_from_row(row))

    async def requeue_expired(self, now: datetime) -> list[Task]:
        expired = (
            select(tasks.c.id, tasks.c.attempts, tasks.c.max_attempts, tasks.c.cancel_requested)
            .where(tasks.c.status == RUNNING, tasks.c.lease_expires_at < now)
            .order_by(tasks.c.id)
            .with_for_update(skip_locked=True)
        )

        def requeue(conn: Connection) -> list[Row]:
            changed: list[Row] = []
            for task in conn.execute(expired).mappings().all():
                statement = (
                    update(tasks)
                    .where(tasks.c.id == task["id"], tasks.c.status == RUNNING, tasks.c.lease_expires_at < now)
                    .values(_after_expiry(task, now))
                    .returning(*tasks.c)
                )
                row = conn.execute(statement).mappings().first()
                if row is not None:
                    _ended(conn, row, now)  # when it was canceled or failed for good
                    changed.append(row)
            _announce(conn, changed)
            return changed

        changed = await self._database.run_write(requeue)
        for changed_row in changed:
            self._changes.changed(changed_row["id"])
        return [counted.ended(task_from_row(changed_row)) for changed_row in changed]

    async def delete_finished_before(self, cutoff: datetime) -> list[Task]:
        statement = delete(tasks).where(tasks.c.status.in_(TERMINAL), tasks.c.finished_at < cutoff).returning(*tasks.c)
        stale_keys = idempotency_keys.c.created_at < self._clock() - timedelta(seconds=IDEMPOTENCY_TTL_SECONDS)

        def delete_finished(conn: Connection) -> Sequence[Row]:
            rows = conn.execute(statement).mappings().all()
            delete_callbacks_of(conn, [row["id"] for row in rows])
            delete_inputs_of(conn, [row["id"] for row in rows])
            conn.execute(delete(idempotency_keys).where(stale_keys))  # expired keys go too
            return rows

        return [task_from_row(row) for row in await self._database.run_write(delete_finished)]

    async def _finish_held(self, task_id: str, worker_id: str, **values: Any) -> Task:
        now = self._clock()
        values = {**values, "finished_at": now, "updated_at": now, "lease_expires_at": None}
        row = await self._database.run_write(lambda conn: _transition(conn, task_id, worker_id, values, now))
        self._changes.changed(task_id)
        return counted.ended(task_from_row(row))

    # -- workers ---------------------------------------------------------------------------------

    async def announce_worker(self, worker: WorkerInfo) -> None:
        values = worker_row(worker)
        changes = {key: value for key, value in values.items() if key != "id"}

        def upsert(conn: Connection) -> None:
            if conn.execute(update(workers).where(workers.c.id == worker.id).values(changes)).rowcount == 0:
                conn.execute(insert(workers), values)

        for attempt in range(2):
            try:
                await self._database.run_write(upsert)
                return
            except IntegrityError:
                # Another process inserted the same worker id between our UPDATE and INSERT: update it.
                if attempt:
                    raise

    async def forget_worker(self, worker_id: str) -> None:
        await self._database.run_write(lambda conn: conn.execute(delete(workers).where(workers.c.id == worker_id)))

    async def live_workers(self, seen_since: datetime) -> list[WorkerInfo]:
        query = select(workers).where(workers.c.last_seen >= seen_since).order_by(workers.c.id)
        rows = await self._database.run_read(lambda conn: conn.execute(query).mappings().all())
        return [worker_from_row(row) for row in rows]


def _ended(conn: Connection, row: Row, now: datetime) -> None:
    """What goes with a change of state that may have ended the task, in its transaction: its
    callback is recorded and its input images are deleted (nothing, if it is not terminal)."""
    if TaskStatus(row["status"]).is_terminal:
        enqueue_final_callback(conn, row, now)
        delete_inputs_of(conn, [row["id"]])


def _announce(conn: Connection, rows: Sequence[Row]) -> None:
    """In the transaction that changed `rows`: tell other processes (NOTIFY, sent at commit), and
    their idle workers of the rows that became claimable now (queued, no retry backoff)."""
    queued = [row["id"] for row in rows if row["status"] == QUEUED and row.get("not_before") is None]
    notify_changed(conn, [row["id"] for row in rows], queued=queued)


def _transition(conn: Connection, task_id: str, worker_id: str, values: Mapping[str, Any], now: datetime) -> Row:
    """The held task's one conditional UPDATE, with what goes with it in its transaction."""
    row = _update_held(conn, task_id, worker_id, values)
    _ended(conn, row, now)  # when it ended
    _announce(conn, [row])
    return row


def _next_queued(*conditions: ColumnElement[bool]) -> Select[tuple[str]]:
    """The ids of tasks matching `conditions` in claim order (highest priority, then oldest), locked;
    on PostgreSQL rows another claim has locked are skipped (SQLite serialises the claims)."""
    return (
        select(tasks.c.id)
        .where(*conditions)
        .order_by(tasks.c.priority.desc(), tasks.c.created_at.asc(), tasks.c.id.asc())
        .with_for_update(skip_locked=True)
    )


def _lease(task_ids: Sequence[str], worker_id: str, now: datetime, lease_seconds: float) -> Any:
    """The claim's one UPDATE: the tasks, if still queued, become running under `worker_id`'s lease."""
    return (
        update(tasks)
        .where(tasks.c.id.in_(task_ids), tasks.c.status == QUEUED)
        .values(
            status=RUNNING,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=tasks.c.attempts + 1,
            started_at=func.coalesce(tasks.c.started_at, now),
            progress_step=0,
            updated_at=now,
            not_before=None,
        )
        .returning(*tasks.c)
    )


def _due(now: datetime) -> ColumnElement[bool]:
    """Queued tasks that may be claimed now (not waiting out a retry's backoff)."""
    return or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now)


def _held_row(conn: Connection, task_id: str, worker_id: str) -> Row:
    """The row of a task `worker_id` holds; else raises why it does not."""
    row = conn.execute(select(tasks).where(*_held(task_id, worker_id))).mappings().first()
    if row is None:
        raise _not_held(conn, task_id, worker_id)
    return row


def _after_transient_failure(task: Row, error: TaskError, now: datetime, delay_seconds: float) -> dict[str, Any]:
    """What a running task that failed for a transient reason becomes (see `retry_later`)."""
    if task["cancel_requested"]:
        return {"status": TaskStatus.CANCELED.value, "finished_at": now}
    if task["attempts"] < task["max_attempts"]:
        return {"status": QUEUED, "not_before": now + timedelta(seconds=delay_seconds), "progress_step": 0}
    return {
        "status": TaskStatus.FAILED.value,
        "finished_at": now,
        "error_code": error.code,
        "error_message": f"{error.message} (after {task['attempts']} attempts)",
    }


def _task_row(conn: Connection, task_id: str) -> Row | None:
    return conn.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()


def _queue_position_query(*, whole_task: bool = False) -> Select[Any]:
    """One statement, built once: the task's status (`whole_task`: its whole row) and, if it is
    queued, as `ahead` how many queued tasks come before it (higher priority, or the same priority
    and created earlier). Called on every read of a queued task by the native API, so it is one
    round trip with no SQL built per call.

    "Before it" is counted as three ranges of the index on (status, priority, created_at), not as one
    OR of them: a database cannot bound an index scan by an OR, and counted all queued tasks for
    every poll; the three ranges cost what is ahead."""
    task, ahead = tasks.alias("task"), tasks.alias("ahead")

    def queued_where(*conditions: ColumnElement[bool]) -> Any:
        return select(func.count()).select_from(ahead).where(ahead.c.status == QUEUED, *conditions).scalar_subquery()

    same_priority = ahead.c.priority == task.c.priority
    count = (
        queued_where(ahead.c.priority > task.c.priority)
        + queued_where(same_priority, ahead.c.created_at < task.c.created_at)
        + queued_where(same_priority, ahead.c.created_at == task.c.created_at, ahead.c.id < task.c.id)
    )
    position = case((task.c.status == QUEUED, count), else_=None).label("ahead")
    columns = task.c if whole_task else (task.c.status,)
    return select(*columns, position).where(task.c.id == bindparam("task_id"))


_QUEUE_POSITION = _queue_position_query()
_TASK_AND_QUEUE_POSITION = _queue_position_query(whole_task=True)
_ACTIVE_TASKS = (
    select(tasks.c.model, tasks.c.status, func.count().label("tasks"), func.min(tasks.c.created_at).label("oldest"))
    .where(tasks.c.status.in_((QUEUED, RUNNING)))  # the status index: finished tasks are not read
    .group_by(tasks.c.model, tasks.c.status)
)


def _before(created_at: datetime, task_id: str) -> ColumnElement[bool]:
    """Rows that come before (created_at, id) in creation order (portable row-value comparison)."""
    return or_(tasks.c.created_at < created_at, and_(tasks.c.created_at == created_at, tasks.c.id < task_id))


def _held(task_id: str, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    return tasks.c.id == task_id, tasks.c.status == RUNNING, tasks.c.worker_id == worker_id


def _if_cancel_requested(then: Any, otherwise: Any, column: Column[Any]) -> ColumnElement[Any]:
    """`then` for a task whose cancel was requested, else `otherwise` (both of `column`'s type)."""
    return case(
        (tasks.c.cancel_requested.is_(True), literal(then, column.type)),
        else_=literal(otherwise, column.type),
    )


def _update_held(conn: Connection, task_id: str, worker_id: str, values: Mapping[str, Any]) -> Row:
    statement = update(tasks).where(*_held(task_id, worker_id)).values(dict(values)).returning(*tasks.c)
    row = conn.execute(statement).mappings().first()
    if row is None:
        raise _not_held(conn, task_id, worker_id)
    return row


def _not_held(conn: Connection, task_id: str, worker_id: str) -> Exception:
    """Why `worker_id` could not change `task_id` (see the module docstring)."""
    query = select(tasks.c.status, tasks.c.worker_id).where(tasks.c.id == task_id)
    row = conn.execute(query).mappings().first()
    if row is None:
        return TaskNotFound(f"there is no task {task_id!r}")
    status = TaskStatus(row["status"])
    if status.is_terminal and row["worker_id"] == worker_id:
        return TaskConflict(f"task {task_id} is already {status.value}; it cannot change")
    return LeaseLost(f"worker {worker_id!r} no longer holds task {task_id} (it is {status.value})")


def _after_expiry(task: Row, now: datetime) -> dict[str, Any]:
    """What a running task whose lease expired becomes: canceled if that was asked, queued again while
    it has attempts left, otherwise failed as `worker_lost`."""
    base = {"updated_at": now, "progress_step": 0, **_NO_LEASE}
    if task["cancel_requested"]:
        return {**base, "status": TaskStatus.CANCELED.value, "finished_at": now}
    if task["attempts"] < task["max_attempts"]:
        return {**base, "status": QUEUED}
    times = "once" if task["attempts"] == 1 else f"{task['attempts']} times"
    return {
        **base,
        "status": TaskStatus.FAILED.value,
        "finished_at": now,
        "error_code": WORKER_LOST,
        "error_message": f"the worker running this task stopped responding {times}",
    }


def _as_task_store(store: SqlTaskStore) -> TaskStore:
    """Never called: makes mypy check that `SqlTaskStore` implements the `TaskStore` protocol."""
    return store


def _required_row(conn: Connection, task_id: str) -> Row:
    row = _task_row(conn, task_id)
    if row is None:  # deleted by retention while its key was still fresh
        raise TaskNotFound(f"the task {task_id!r} made for this Idempotency-Key no longer exists")
    return row
