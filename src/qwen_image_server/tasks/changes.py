"""Wake-ups for readers that wait on a task (event streams, `?wait=`), within one process.

Readers poll the store every `progress_interval_seconds`, which works across processes but tells a
client of a task's end up to one interval late. When the change happens in the same process (the
embedded `serve`, where the worker shares the API's store), the store announces it here and the
waiting reader reads at once; the poll stays as the fallback for changes made elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib


class TaskChanges:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def changed(self, task_id: str) -> None:
        """`task_id` changed: wake everyone waiting on it. Call from the event loop's thread."""
        for event in self._waiting.get(task_id, ()):
            event.set()

    async def wait(self, task_id: str, timeout: float) -> None:
        """Until `task_id` changes in this process, or `timeout` seconds pass."""
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
