"""Periodic jobs: requeue tasks of dead workers, delete expired results and old tasks.

Every process that holds the store runs them; they are idempotent, so several processes running
them at once is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from qwen_image_server.errors import StoreUnavailable
from qwen_image_server.results.store import ResultStore
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import utcnow
from qwen_image_server.tasks.store import TaskStore

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, settings: Settings, store: TaskStore, results: ResultStore) -> None:
        self.settings = settings
        self.store = store
        self.results = results

    async def rescue_orphans(self) -> int:
        """Tasks whose worker stopped renewing its lease go back to the queue (or fail for good)."""
        changed = await self.store.requeue_expired(utcnow())
        for task in changed:
            log.warning("task %s lost its worker; now %s (attempt %d)", task.id, task.status, task.attempts)
        return len(changed)

    async def clean_up(self) -> tuple[int, int]:
        """Delete tasks past retention (with their images) and images past their TTL."""
        now = utcnow()
        old_tasks = await self.store.delete_finished_before(
            now - timedelta(seconds=self.settings.task_retention_seconds)
        )
        for task in old_tasks:
            await self.results.delete_task(task.id)
        removed_images = await self.results.delete_older_than(now - timedelta(seconds=self.settings.result_ttl_seconds))
        return len(old_tasks), removed_images

    async def run(self) -> None:
        """Loop forever (cancel the asyncio task to stop): rescue often, clean up rarely."""
        rescue_every = max(self.settings.lease_seconds / 2, 0.2)
        cleanup_every = self.settings.cleanup_interval_seconds
        since_cleanup = cleanup_every  # clean once at start
        while True:
            try:
                await self.rescue_orphans()
                if since_cleanup >= cleanup_every:
                    await self.clean_up()
                    since_cleanup = 0.0
            except StoreUnavailable as exc:  # an outage is expected now and then: one line
                log.warning("maintenance waits: the task database is unreachable or busy (%s)", exc.detail)
            except Exception:  # a failing job must not kill the loop; it will run again
                log.exception("maintenance failed")
            await asyncio.sleep(rescue_every)
            since_cleanup += rescue_every
