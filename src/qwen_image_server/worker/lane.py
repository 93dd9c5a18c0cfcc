"""The engine lane: one thread that runs the engine's calls back to back, so the engine never waits
for the worker between two tasks.

The worker claims the next task (or batch of tasks: one call) while the current call is in its last
denoising step and queues it here at once; when the current call returns, this thread starts the
next one straight away, without a trip through the event loop. Everything else between two calls
(storing the images, the completion writes, the claim) runs on the event loop meanwhile, overlapped
with the next call's pipeline.

A queued call that has not started can be withdrawn (a draining worker hands its tasks back at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Job(Generic[T]):
    """One engine call in the lane: `result` is awaitable on the event loop."""

    future: concurrent.futures.Future[T]
    result: asyncio.Future[T]
    near_end: bool = False  # in its last step: time to claim the next task

    def withdraw(self) -> bool:
        """Take the call out of the lane if it has not started; True if it will never run."""
        return self.future.cancel()


class EngineLane:
    """Runs engine calls one at a time, in the order given, on a thread of its own.

    `on_change` is called on the event loop whenever a call reaches its last step or ends: the moment
    the worker may want to claim the next task (see `wants_work`)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._on_change = on_change
        self._jobs: set[Job[Any]] = set()

    def submit(self, call: Callable[[Callable[[], None]], T]) -> Job[T]:
        """Queue `call(near_end)`; the call invokes `near_end()` (from its thread) when it enters its
        last step, so that the next task is claimed while that step runs."""
        loop = asyncio.get_running_loop()
        job: Job[T]

        def near_end() -> None:
            # `job` is looked up on the loop, after submit() has returned and bound it.
            loop.call_soon_threadsafe(lambda: self._mark_near_end(job))

        future = self._executor.submit(call, near_end)
        job = Job(future, asyncio.wrap_future(future, loop=loop))
        self._jobs.add(job)
        job.result.add_done_callback(lambda _: self._forget(job))
        return job

    def wants_work(self) -> bool:
        """True when every queued or running call is in its last step: a new call would start as
        soon as the engine is free, and not wait behind a whole other task."""
        return all(job.near_end for job in self._jobs)

    def shutdown(self) -> None:
        """Drop the calls that have not started; a running one finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _mark_near_end(self, job: Job[T]) -> None:
        if not job.near_end:
            job.near_end = True
            self._on_change()

    def _forget(self, job: Job[T]) -> None:
        self._jobs.discard(job)
        self._on_change()
