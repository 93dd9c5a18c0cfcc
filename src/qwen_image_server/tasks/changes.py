"""Wake-ups for readers that wait on a task (event streams, `?wait=`) and for idle workers.

Readers poll the store every `progress_interval_seconds`, which works across processes but tells a
client of a task's end up to one interval late. When the change happens in the same process (the
embedded `serve`, where the worker shares the API's store), the store announces it here and the
waiting reader reads at once. On PostgreSQL, changes made by other processes arrive here too, by
LISTEN/NOTIFY (tasks/notify.py). The poll stays as the fallback for changes nobody announced.

`queued()` says a task became queued somewhere: the hooks (the worker's `wake`) run, so an idle
worker claims now instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class TaskChanges:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._on_queued: list[Callable[[], None]] = []

    def changed(self, task_id: str) -> None:
        """`task_id` changed: wake everyone waiting on it. Call from the event loop's thread."""
        for event in self._waiting.get(task_id, ()):
            event.set()

    def changed_all(self) -> None:
        """Anything may have changed (announcements were missed): wake every reader and worker."""
        for events in self._waiting.values():
            for event in events:
                event.set()
        self.queued()

    def on_queued(self, hook: Callable[[], None]) -> None:
        """Call `hook` (on the event loop) whenever a task becomes queued."""
        self._on_queued.append(hook)

    def queued(self) -> None:
        for hook in self._on_queued:
            hook()

    async def wait(self, task_id: str, timeout: float) -> None:
        """Until `task_id` changes (as announced here), or `timeout` seconds pass."""
        event = asyncio.Event()
        self._waiting.setdefault(task_id, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            waiting = self._waiting.get(task_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[task_id]
