"""The worker: claim a task -> run the engine -> store the images -> complete the task.

The engine call blocks, so it runs in a thread; the event loop meanwhile writes progress (throttled
to `progress_interval_seconds`), extends the task's lease, and picks up cancel requests, which it
passes to the engine through a `threading.Event` that the engine checks after every step.

On stop (SIGTERM), the worker claims nothing more and gives the running task `drain_seconds` to
finish; after that it stops the task at its next step and hands it back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from qwen_image_server.domain import GenerationRequest, ImageResult, ModelName, StepProgress
from qwen_image_server.errors import GenerationCanceled, QwenImageError
from qwen_image_server.results.store import ResultStore
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, StoredImage, Task, TaskError, WorkerInfo, utcnow
from qwen_image_server.tasks.store import LeaseLost, TaskConflict, TaskStore

log = logging.getLogger(__name__)


class GenerationEngine(Protocol):
    """What the worker needs of `engine.Engine` (a stand-in with the same calls may replace it)."""

    def load(self, model: ModelName) -> object: ...

    def is_loaded(self, model: ModelName) -> bool: ...

    def validate(self, request: GenerationRequest) -> None:
        """The checks that need the model (prompt length in tokens)."""

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable[[StepProgress], None] | None = None,
        on_partial: Callable[[ImageResult], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ImageResult]: ...


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

    def wake(self) -> None:
        """A task was queued in this process: look for it now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Claim nothing more; the running task gets `drain_seconds` to finish."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        presence = asyncio.create_task(self._stay_announced())
        try:
            await self._announce("loading")
            for model in self.settings.models:
                await asyncio.to_thread(self.engine.load, model)
            await self._announce("ready")
            while not self._stopping.is_set():
                task = await self.store.claim(self.id, self.settings.models, self.settings.lease_seconds)
                if task is None:
                    await self._idle()
                    continue
                await self.execute(task)
        finally:
            presence.cancel()
            await self.store.forget_worker(self.id)

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_seconds)

    async def _stay_announced(self) -> None:
        """Refresh our row in the workers table, so /readyz sees us alive, also during long tasks."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            await self._announce(self._state)

    async def _announce(self, state: str) -> None:
        self._state = state
        info = WorkerInfo(self.id, socket.gethostname(), os.getpid(), self.settings.models, state, utcnow())
        await self.store.announce_worker(info)

    async def execute(self, task: Task) -> None:
        """Run one claimed task to a final state (or back to the queue)."""
        run = _Run(cancel=threading.Event())
        generation = asyncio.ensure_future(asyncio.to_thread(self._generate, task, run))
        await self._watch(task, run, generation)
        try:
            images = await generation
        except GenerationCanceled:
            await self._after_stop(task, run)
            return
        except QwenImageError as exc:
            await self._fail(task, TaskError(exc.code, exc.message))
            return
        except Exception as exc:
            log.exception("task %s failed", task.id)
            await self._fail(task, TaskError("generation_failed", f"{type(exc).__name__}: {exc}"))
            return
        await self._complete(task, images, run)

    def _generate(self, task: Task, run: _Run) -> list[ImageResult]:
        def on_step(progress: StepProgress) -> None:
            run.latest = progress

        return self.engine.generate(task.request, on_step=on_step, on_partial=run.partials.append, cancel=run.cancel)

    async def _watch(self, task: Task, run: _Run, generation: asyncio.Future[list[ImageResult]]) -> None:
        """While the engine runs: write progress, keep the lease, relay cancel and drain."""
        interval = self.settings.progress_interval_seconds
        heartbeat_every = self.settings.lease_seconds / 3
        written: StepProgress | None = None
        last_beat = time.monotonic()
        drain_deadline: float | None = None
        while not generation.done():
            await asyncio.wait({generation}, timeout=interval)
            now = time.monotonic()
            if self._stopping.is_set() and drain_deadline is None:
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
        run.previews.extend([await self.results.put(task.id, partial) for partial in fresh])
        return list(run.previews)

    async def _heartbeat(self, task: Task, run: _Run, latest: StepProgress | None) -> None:
        progress = Progress(latest.step, latest.total) if latest else None
        previews = await self._store_previews(task, run)
        try:
            lease = self.settings.lease_seconds
            canceled = await self.store.heartbeat(task.id, self.id, lease, progress, previews=previews)
        except LeaseLost:
            run.stop(StopReason.LEASE_LOST)
            return
        if canceled:
            run.stop(StopReason.USER)

    async def _after_stop(self, task: Task, run: _Run) -> None:
        try:
            if run.stop_reason is StopReason.DRAIN:
                await self.store.release(task.id, self.id)
            elif run.stop_reason is StopReason.USER:
                await self.store.finish_canceled(task.id, self.id)
        except TaskConflict:
            pass  # the task is someone else's now, or already final; nothing of ours to record
        log.info("task %s stopped (%s)", task.id, run.stop_reason)

    async def _complete(self, task: Task, images: Sequence[ImageResult], run: _Run) -> None:
        if len(run.partials) > len(run.previews):  # made after the last heartbeat
            await self._heartbeat(task, run, run.latest)
        stored: list[StoredImage] = [await self.results.put(task.id, image) for image in images]
        try:
            await self.store.complete(task.id, self.id, stored)
        except TaskConflict:
            # Another run owns the task now and writes the same keys; its images are the ones kept.
            log.warning("task %s finished after its lease was lost; another run owns it", task.id)

    async def _fail(self, task: Task, error: TaskError) -> None:
        try:
            await self.store.fail(task.id, self.id, error)
        except TaskConflict:
            log.warning("task %s failed after its lease was lost", task.id)
