"""The worker: claim a batch of tasks -> run the engine once for all of them -> encode and store
each task's images -> complete each task.

A claim takes the next queued task and, with `max_batch_size` > 1, up to `max_batch_size - 1`
queued tasks that can share its pipeline call (the same `batch_key`: text-to-image, the same size
on the model's grid, steps, CFG on or off); with the default of 1, every batch is one task. The
batch is one engine call (`render_batch`), but each task in it keeps a run of its own (`_Run`):
its progress, previews, lease and cancel, and its own end (completed, failed, canceled, retried)
from its own outcome of the call. A user's cancel sets the cancel event of that task only; the
engine drops its rows and the others go on.

The engine call blocks, so it runs in a thread; the event loop meanwhile writes each task's
progress (throttled to `progress_interval_seconds`), extends its lease, and picks up cancel
requests, which it passes to the engine through the task's `threading.Event`, checked after every
step.

Between two batches the engine does not wait for the worker: the next batch is claimed once every
task of the current one is in its last step (or stopped), and is queued in the engine's lane
(worker/lane.py), which starts it as soon as the current call returns. Encoding the finished
images (the engine hands them back unencoded; they are encoded on threads of the loop's pool),
storing them and the completion writes run meanwhile, overlapped with the next batch's pipeline.
So a worker holds at most one batch beyond the one running, for about one step, and at most
`MAX_IN_FLIGHT` batches in all.

On stop (SIGTERM), the worker claims nothing more, hands a batch that has not started back to the
queue at once (every task of it), and gives the running batch `drain_seconds` to finish; after
that it stops every task of it at its next step and hands them back to the queue.

When the task database cannot be reached (down, restarting), the worker waits instead of ending: it
claims again at its next poll, skips heartbeats (the running task goes on; if the outage outlasts
the lease, the task is requeued and this run's late result is refused), and retries the final write
of a task until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from qwen_image_server.domain import (
    BatchEntry,
    GenerationRequest,
    ImageResult,
    ModelName,
    RenderedImage,
    StepProgress,
)
from qwen_image_server.errors import (
    GenerationCanceled,
    QwenImageError,
    RetryLater,
    StorageUnavailable,
    StoreUnavailable,
)
from qwen_image_server.metrics import gpu
from qwen_image_server.metrics.recorded import StepClock
from qwen_image_server.report import CONTENT_WITHHELD, TaskReport
from qwen_image_server.results.store import ResultStore
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, StoredImage, Task, TaskError, WorkerInfo, utcnow
from qwen_image_server.tasks.store import LeaseLost, TaskConflict, TaskStore
from qwen_image_server.worker.lane import EngineLane, Job

log = logging.getLogger(__name__)

# Batches (engine calls) a worker holds at once: one whose images are being stored, one in its last
# step, and the next one queued behind it (more would only pile up unstored images when storing is
# slow). Counted in batches, not tasks: the engine makes a batch's images together and the worker
# stores them together, so a batch is the unit that piles up; at most MAX_IN_FLIGHT x max_batch_size
# tasks' images wait. (A limit in tasks would keep a worker with batches of 3 or more from claiming
# the next batch during the last step: the engine would wait for the worker between two batches.)
MAX_IN_FLIGHT = 3

# Per task of a batch: its images, or the error that ended it alone (GenerationCanceled for a
# task canceled while the others went on).
Outcome = Sequence[RenderedImage] | QwenImageError


class GenerationEngine(Protocol):
    """What the worker needs of `engine.Engine` (a stand-in with the same calls may replace it)."""

    def load(self, model: ModelName) -> object: ...

    def is_loaded(self, model: ModelName) -> bool: ...

    def validate(self, request: GenerationRequest) -> None:
        """The checks that need the model (prompt length in tokens)."""

    def warm_up(self) -> None:
        """Run the sizes the deployment names once (compilation, autotuning) before taking work."""

    def render_batch(self, entries: Sequence[BatchEntry]) -> Sequence[Outcome]:
        """Run the requests (as one pipeline call where they share a `batch_key`); per entry, in
        order, its images unencoded (the worker encodes them off the engine) or its own error. Each
        entry's `cancel` stops that entry only."""


class StopReason(StrEnum):
    USER = "user"  # the client canceled the task
    DRAIN = "drain"  # the worker is shutting down
    LEASE_LOST = "lease_lost"  # another worker owns the task now


@dataclass
class _Run:
    """The state shared between the engine thread and the loop for one task."""

    cancel: threading.Event
    latest: StepProgress | None = None
    stop_reason: StopReason | None = None
    partials: list[ImageResult] = field(default_factory=list)  # appended by the engine thread
    previews: list[StoredImage] = field(default_factory=list)  # the partials stored so far

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        results: ResultStore,
        engine: GenerationEngine,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.results = results
        self.engine = engine
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._state = "loading"
        self._database_lost = False  # seen unreachable, not yet reached again (to log an outage once)
        self._changed = asyncio.Event()  # a task reached its last step or ended, or stop(): claim now?
        self._lane = EngineLane(on_change=self._changed.set)
        self._in_flight: set[asyncio.Task[None]] = set()
        self.max_in_flight = MAX_IN_FLIGHT  # 1 runs batches strictly one after another (bench/duty_cycle.py)
        self._crash: BaseException | None = None  # an unexpected error of a task's run stops the worker
        self._problem: str | None = None  # what keeps us from finishing tasks now, announced for /readyz
        self._claims_held_until = 0.0  # monotonic time: after a transient failure, claim nothing before

    def wake(self) -> None:
        """A task was queued in this process: look for it now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Claim nothing more; a claimed batch that has not started goes back to the queue, the
        running one gets `drain_seconds` to finish."""
        self._stopping.set()
        self._wake.set()
        self._changed.set()

    async def run(self) -> None:
        presence = asyncio.create_task(self._stay_announced())
        try:
            await self._announce("loading")
            for model in self.settings.models:
                await asyncio.to_thread(self.engine.load, model)
            await self._announce("warming")  # not ready yet: /readyz answers 200 only after warm-up
            await asyncio.to_thread(self.engine.warm_up)
            await self._announce("ready")
            while await self._until_engine_wants_work():
                if await self._holding_claims():
                    continue
                batch = await self._claim()
                if not batch:
                    await self._idle()
                    continue
                self._start(batch)
            await asyncio.gather(*self._in_flight, return_exceptions=True)  # the drain
            if self._crash is not None:
                raise self._crash
        finally:
            for execution in list(self._in_flight):  # left only when run() itself was cancelled
                execution.cancel()
            self._lane.shutdown()
            presence.cancel()
            try:
                await self.store.forget_worker(self.id)
            except StoreUnavailable as exc:
                self._database_unreachable(exc, "signing off")  # our row simply ages out of /readyz

    async def _until_engine_wants_work(self) -> bool:
        """Wait until the engine is idle or in the last step of its batch, with room for one more
        batch in flight; False once the worker is stopping."""
        while True:
            self._changed.clear()
            if self._stopping.is_set():
                return False
            if self._lane.wants_work() and len(self._in_flight) < self.max_in_flight:
                return True
            await self._changed.wait()

    def _start(self, batch: Sequence[Task]) -> None:
        """Queue the batch's engine call in the lane now (so the lane knows it is taken before the
        next claim is considered), and see each of its tasks through on the loop."""
        runs = [_Run(cancel=threading.Event()) for _ in batch]
        job = self._lane.submit(lambda near_end: self._generate(batch, runs, near_end))
        name = "tasks " + ", ".join(task.id for task in batch)
        execution = asyncio.create_task(self._see_batch_through(batch, runs, job), name=name)
        self._in_flight.add(execution)
        execution.add_done_callback(self._ended)

    def _ended(self, execution: asyncio.Task[None]) -> None:
        self._in_flight.discard(execution)
        if not execution.cancelled() and execution.exception() is not None and self._crash is None:
            self._crash = execution.exception()  # as before the lane: such an error ends run()
            self._stopping.set()
        self._changed.set()

    async def _claim(self) -> list[Task]:
        """The next batch (up to `max_batch_size` tasks that can share one engine call), each task
        with its input images; [] when none is queued, or when the database cannot be reached or is
        busy (tasks claimed whose inputs could not be read then come back to the queue when their
        leases lapse)."""
        settings = self.settings
        try:
            claimed = await self.store.claim_batch(
                self.id, settings.models, settings.lease_seconds, limit=settings.max_batch_size
            )
            batch = [task for task in [await self._with_inputs(task) for task in claimed] if task is not None]
        except StoreUnavailable as exc:
            self._database_unreachable(exc, "claiming a task")
            return []
        self._database_reached()
        return batch

    async def _with_inputs(self, task: Task) -> Task | None:
        """The task with its input images; None when it ended between the claim and this read."""
        try:
            return await self.store.with_inputs(task)
        except LeaseLost as exc:
            log.info("%s", exc.message)
            return None

    async def _holding_claims(self) -> bool:
        """After a transient failure, wait out its backoff before claiming (interrupted by stop);
        True when it waited."""
        remaining = self._claims_held_until - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=remaining)
        return True

    def _database_unreachable(self, exc: StoreUnavailable, doing: str) -> None:
        """The task database cannot be reached or cannot take the call now (locked past the busy
        timeout, full); logged once per outage: the caller carries on and tries again later."""
        if not self._database_lost:
            log.warning("the task database is unreachable or busy (%s, while %s); waiting for it", exc.detail, doing)
        self._database_lost = True

    def _database_reached(self) -> None:
        if self._database_lost:
            log.warning("the task database is reachable again")
        self._database_lost = False

    async def _until_written(self, doing: str, write: Callable[[], Awaitable[object]]) -> None:
        """A task's final write, retried while the database is unreachable: the work is done, and
        giving up would have the task run again once its lease lapses. (A write that committed just
        before the connection broke is refused as `TaskConflict` on the retry.)"""
        while True:
            try:
                await write()
            except StoreUnavailable as exc:
                self._database_unreachable(exc, doing)
                await asyncio.sleep(self.settings.poll_interval_seconds)
                continue
            self._database_reached()
            return

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_seconds)

    async def _stay_announced(self) -> None:
        """Refresh our row in the workers table, so /readyz sees us alive, also during long tasks."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            await self._announce(self._state)
            gpu.publish()  # metrics/gpu.py: GPU memory for the scrapes of other processes

    async def _announce(self, state: str) -> None:
        self._state = state
        info = WorkerInfo(
            self.id, socket.gethostname(), os.getpid(), self.settings.models, state, utcnow(), self._problem
        )
        try:
            await self.store.announce_worker(info)
        except StoreUnavailable as exc:  # the next announcement, a third of a lease later, tries again
            self._database_unreachable(exc, "announcing this worker")

    async def _see_batch_through(
        self, batch: Sequence[Task], runs: Sequence[_Run], job: Job[Sequence[Outcome]]
    ) -> None:
        """See every task of the batch through, each on its own: one that crashes (an unexpected
        error, which stops the worker) does not cut the others' final writes short."""
        seen = [
            self._see_through(task, run, job, index) for index, (task, run) in enumerate(zip(batch, runs, strict=True))
        ]
        for outcome in await asyncio.gather(*seen, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _see_through(self, task: Task, run: _Run, job: Job[Sequence[Outcome]], index: int) -> None:
        """Follow a claimed task (entry `index` of its batch's call) to a final state (or back to
        the queue)."""
        await self._watch(task, run, job)
        if job.future.cancelled():  # withdrawn before it started: the worker is draining
            run.stop(StopReason.DRAIN)  # also when the watch of another task of the batch withdrew it
            await self._after_stop(task, run)
            return
        try:
            outcome = (await job.result)[index]
            if isinstance(outcome, QwenImageError):
                raise outcome
            # Off the engine's thread: the lane starts the next batch while these are encoded.
            images = await asyncio.to_thread(_encode_all, outcome)
        except GenerationCanceled:
            await self._after_stop(task, run)
            return
        except RetryLater as exc:  # transient: the task runs again later (invalid input fails at once)
            await self._retry_later(task, TaskError(exc.code, exc.message))
            return
        except QwenImageError as exc:
            await self._fail(task, TaskError(exc.code, exc.message))
            return
        except Exception as exc:
            log.exception("task %s failed", task.id)
            await self._fail(task, TaskError("generation_failed", f"{type(exc).__name__}: {exc}"))
            return
        await self._complete(task, images, run)

    def _generate(self, batch: Sequence[Task], runs: Sequence[_Run], near_end: Callable[[], None]) -> Sequence[Outcome]:
        steps = _BatchSteps(runs, near_end, StepClock(batch[0].model.value))
        entries = [
            BatchEntry(task.request, on_step=steps.relay(index), on_partial=run.partials.append, cancel=run.cancel)
            for index, (task, run) in enumerate(zip(batch, runs, strict=True))
        ]
        return self.engine.render_batch(entries)

    async def _watch(self, task: Task, run: _Run, job: Job[Sequence[Outcome]]) -> None:
        """While the task waits in the lane and while it runs: write progress, keep the lease, relay
        cancel and drain (a batch that has not started yet is withdrawn at once, with all its tasks)."""
        generation = job.result
        interval = self.settings.progress_interval_seconds
        heartbeat_every = self.settings.lease_seconds / 3
        written: StepProgress | None = None
        last_beat = time.monotonic()
        drain_deadline: float | None = None
        while not generation.done():
            await asyncio.wait({generation}, timeout=interval)
            now = time.monotonic()
            if self._stopping.is_set() and drain_deadline is None:
                if job.withdraw():
                    run.stop(StopReason.DRAIN)
                    return
                drain_deadline = now + self.settings.drain_seconds
            if drain_deadline is not None and now >= drain_deadline:
                run.stop(StopReason.DRAIN)
            new_previews = len(run.partials) > len(run.previews)
            if run.latest == written and not new_previews and now - last_beat < heartbeat_every:
                continue
            written, last_beat = run.latest, now
            await self._heartbeat(task, run, written)

    async def _store_previews(self, task: Task, run: _Run) -> list[StoredImage] | None:
        """Store the partial images made since the last heartbeat; None when there are none."""
        fresh = run.partials[len(run.previews) :]
        if not fresh:
            return None
        try:
            run.previews.extend([await self.results.put(task.id, partial) for partial in fresh])
        except StorageUnavailable as exc:  # previews are a courtesy: skip them; the results will tell
            log.warning("task %s: previews not stored: %s", task.id, exc.message)
            del run.partials[len(run.previews) :]
            return None
        return list(run.previews)

    async def _heartbeat(self, task: Task, run: _Run, latest: StepProgress | None) -> None:
        progress = Progress(latest.step, latest.total) if latest else None
        previews = await self._store_previews(task, run)
        try:
            lease = self.settings.lease_seconds
            canceled = await self.store.heartbeat(task.id, self.id, lease, progress, previews=previews)
        except TaskConflict:  # LeaseLost; or an earlier run of ours, requeued after an outage and
            # then claimed again by this worker, has finished the task meanwhile: stop this run too
            run.stop(StopReason.LEASE_LOST)
            return
        except StoreUnavailable as exc:
            self._database_unreachable(exc, f"reporting progress of task {task.id}")
            return  # the engine goes on; the next heartbeat tries again
        if canceled:
            run.stop(StopReason.USER)

    async def _after_stop(self, task: Task, run: _Run) -> None:
        try:
            if run.stop_reason is StopReason.DRAIN:
                await self._until_written(f"releasing task {task.id}", lambda: self.store.release(task.id, self.id))
            elif run.stop_reason is StopReason.USER:
                await self._until_written(
                    f"canceling task {task.id}", lambda: self.store.finish_canceled(task.id, self.id)
                )
        except TaskConflict:
            pass  # the task is someone else's now, or already final; nothing of ours to record
        log.info("task %s stopped (%s)", task.id, run.stop_reason)

    async def _complete(self, task: Task, images: Sequence[ImageResult], run: _Run) -> None:
        if len(run.partials) > len(run.previews):  # made after the last heartbeat
            await self._heartbeat(task, run, run.latest)
        delivered = [image for image in images if image.withheld is None]
        if images and not delivered:  # nothing to deliver: a failure, as the providers report it
            reasons = "; ".join(sorted({image.withheld or "" for image in images}))
            await self._fail(task, TaskError(CONTENT_WITHHELD, f"every image was withheld: {reasons}"))
            return
        if not await self._still_ours(task):
            return
        try:
            stored: list[StoredImage] = [await self.results.put(task.id, image) for image in delivered]
        except StorageUnavailable as exc:
            await self._retry_later(task, TaskError(exc.code, exc.message))
            return
        await self._set_problem(None)
        report = TaskReport.from_images(images) if images else None
        try:
            await self._until_written(
                f"completing task {task.id}", lambda: self.store.complete(task.id, self.id, stored, report)
            )
        except TaskConflict:
            # Another run owns the task now and writes the same keys; its images are the ones kept.
            log.warning("task %s finished after its lease was lost; another run owns it", task.id)

    async def _still_ours(self, task: Task) -> bool:
        """Renew the lease before the images are written: a run that lost its task (its host was cut
        off and another run took over) must not overwrite the other run's images, which have the same
        keys. The fenced final write refuses it anyway; this keeps its bytes out of the store too,
        but for a lease that lapses in the moment between this check and the writes."""
        try:
            await self._until_written(
                f"renewing the lease of task {task.id}",
                lambda: self.store.heartbeat(task.id, self.id, self.settings.lease_seconds, None),
            )
        except TaskConflict:
            log.warning("task %s finished after its lease was lost; another run owns it: its images are kept", task.id)
            return False
        return True

    async def _retry_later(self, task: Task, error: TaskError) -> None:
        """A transient failure (results storage full or read-only, ...): the task goes back to the
        queue to run again after a backoff that doubles with each attempt (or fails once its attempts
        are used up), this worker claims nothing meanwhile, and /readyz reports the problem."""
        settings = self.settings
        delay = min(settings.retry_backoff_seconds * 2 ** max(task.attempts - 1, 0), settings.retry_backoff_max_seconds)
        log.warning("task %s, attempt %d of %d: %s; retrying in %.0f s", task.id, task.attempts,
                    task.max_attempts, error.message, delay)  # fmt: skip
        self._claims_held_until = time.monotonic() + delay
        await self._set_problem(error.message)
        with contextlib.suppress(TaskConflict):  # the task is someone else's now, or already final
            await self._until_written(
                f"retrying task {task.id} later", lambda: self.store.retry_later(task.id, self.id, error, delay)
            )

    async def _set_problem(self, problem: str | None) -> None:
        """Announce at once what keeps this worker from finishing tasks (None: nothing any more)."""
        if problem != self._problem:
            self._problem = problem
            await self._announce(self._state)

    async def _fail(self, task: Task, error: TaskError) -> None:
        try:
            await self._until_written(f"failing task {task.id}", lambda: self.store.fail(task.id, self.id, error))
        except TaskConflict:
            log.warning("task %s failed after its lease was lost", task.id)


class _BatchSteps:
    """Relays each task's steps to its run (from the engine's thread), and calls `near_end` once
    every task of the batch is in its last step or stopped: the engine is about to be free, time to
    claim the next batch. (Also right for an engine that runs the requests one after another: the
    first request's last step is not the batch's.)"""

    def __init__(self, runs: Sequence[_Run], near_end: Callable[[], None], clock: StepClock) -> None:
        self._runs = runs
        self._clock = clock  # the step time histogram
        self._near_end = near_end
        self._in_last_step = [False] * len(runs)
        self._told = False

    def relay(self, index: int) -> Callable[[StepProgress], None]:
        def on_step(progress: StepProgress) -> None:
            self._clock.tick(progress.step)
            self._runs[index].latest = progress
            if progress.step == progress.total - 1:
                self._in_last_step[index] = True
            if not self._told and self._all_near_end():
                self._told = True
                self._near_end()

        return on_step

    def _all_near_end(self) -> bool:
        return all(last or run.cancel.is_set() for last, run in zip(self._in_last_step, self._runs, strict=True))


def _encode_all(rendered: Sequence[RenderedImage]) -> list[ImageResult]:
    return [image.encode() for image in rendered]
