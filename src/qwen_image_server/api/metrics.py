"""GET /metrics: Prometheus' text format (docs/metrics.md).

Like every endpoint it needs an API key once keys exist, of the admin scope: the figures are of the
whole server (every key's tasks), not of the caller's. The setting `metrics_public` opens it for a
scraper on a private network. A scrape reads the task database twice (the unfinished tasks grouped
by model and status, on the status index, and the workers table), the rest from memory or from the
shared directory of the multi-process mode, which is read off the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from qwen_image_server.api.dialect import authenticate
from qwen_image_server.metrics.scrape import ModelQueue, Readings, exposition
from qwen_image_server.service import Service, models_ready
from qwen_image_server.tasks.keys import Scope
from qwen_image_server.tasks.model import TaskStatus, utcnow

METRICS_PATH = "/metrics"


def metrics_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get(METRICS_PATH, tags=["operations"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this server: tasks, queue, steps, images, callbacks, HTTP, GPU memory."""
        if not service.settings.metrics_public:
            await authenticate(service, request, "Authorization", scope=Scope.ADMIN)
        readings = await read_queue(service)
        body = await asyncio.to_thread(exposition, readings, gpu=service.engine is not None)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


async def read_queue(service: Service) -> Readings:
    """The unfinished tasks and the ready workers of each served model, read now."""
    active = await service.store.active_tasks()
    workers = await service.live_workers()
    ready = models_ready(workers)
    queues = []
    for model in service.settings.models:
        of_model = {group.status: group for group in active if group.model == model}
        queued, running = of_model.get(TaskStatus.QUEUED), of_model.get(TaskStatus.RUNNING)
        queues.append(
            ModelQueue(
                model.value,
                queued=queued.count if queued else 0,
                oldest_queued_at=queued.oldest_created_at if queued else None,
                running=running.count if running else 0,
                ready_workers=len(ready.get(model, [])),
            )
        )
    return Readings(utcnow(), queues, live_workers=len(workers))
