"""Wiring: from `Settings` to the running parts (task store, results, signer, worker, maintenance,
callback sender).

`serve` runs all of them in one process (the embedded default); `worker` runs a worker, the
maintenance jobs and the callback sender against the same data directory or database. The HTTP app
receives the `Service` and reaches its parts through it; nothing is looked up on global or app state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from qwen_image_server.api.rate_limit import RequestRateLimiter, build_rate_limiter
from qwen_image_server.callbacks.sender import CallbackSender, CallbackShape
from qwen_image_server.callbacks.signing import WEBHOOK_SECRET_FILE, as_webhook_secret
from qwen_image_server.domain import ModelName
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.results.links import Presigner, result_linker
from qwen_image_server.results.local import LocalResultStore
from qwen_image_server.results.signing import UrlSigner, load_or_create_secret
from qwen_image_server.results.store import ResultStore
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.database import Database
from qwen_image_server.tasks.keys import SqlKeyStore
from qwen_image_server.tasks.model import WorkerInfo, utcnow
from qwen_image_server.tasks.outbox import SqlCallbackStore
from qwen_image_server.tasks.sql import SqlTaskStore
from qwen_image_server.tasks.store import TaskStore
from qwen_image_server.worker.maintenance import Maintenance
from qwen_image_server.worker.worker import GenerationEngine, Worker

log = logging.getLogger(__name__)


@dataclass
class Service:
    """The parts of a server or worker process. Build with `Service.build`, then `start()`."""

    settings: Settings
    database: Database  # shared by the three stores below; started and closed with the service
    store: TaskStore
    results: ResultStore
    signer: UrlSigner
    keys: SqlKeyStore
    callbacks: SqlCallbackStore
    sender: CallbackSender
    presigner: Presigner | None = None  # set when result links are presigned URLs of the store
    engine: GenerationEngine | None = None
    worker: Worker | None = None
    rate_limiter: RequestRateLimiter | None = None  # requests per minute per key (api/rate_limit.py)
    # Called (on the loop) when the worker's loop ends on an error: the commands stop the process
    # then, and exit non-zero, so that a supervisor restarts it instead of keeping a worker-less one.
    on_worker_failure: Callable[[], None] | None = None
    worker_failed: bool = False
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    _started: bool = False

    @classmethod
    def build(cls, settings: Settings, *, engine: GenerationEngine | None = None, run_worker: bool) -> Service:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        secret = (
            settings.url_secret.encode()
            if settings.url_secret
            else load_or_create_secret(settings.data_dir / "url-secret")
        )
        database = Database(settings.resolved_database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        store = SqlTaskStore(database)
        results, presigner = build_results(settings)
        signer = UrlSigner(secret, ttl_seconds=settings.result_ttl_seconds)
        keys, callbacks = SqlKeyStore(database), SqlCallbackStore(database)
        sender = CallbackSender(
            settings,
            store,
            callbacks,
            keys,
            links=result_linker(signer, presigner, callback_link_base(settings)),
            shapes=_callback_shapes(),
            server_secret=server_webhook_secret(settings),
        )
        service = cls(settings, database, store, results, signer, keys, callbacks, sender)
        store.on_task_queued(service.wake_worker)  # tasks queued by other processes (PostgreSQL)
        service.presigner = presigner
        service.rate_limiter = build_rate_limiter(settings)
        if run_worker:
            if engine is None:
                from qwen_image_server.engine import Engine

                engine = Engine(settings)
            service.engine = engine
            service.worker = Worker(settings, store, results, engine)
        return service

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.database.start()
        maintenance = Maintenance(self.settings, self.store, self.results)
        self._background.append(asyncio.create_task(maintenance.run(), name="maintenance"))
        self._background.append(asyncio.create_task(self.sender.run(), name="callbacks"))
        if self.worker is not None:
            worker_task = asyncio.create_task(self.worker.run(), name="worker")
            worker_task.add_done_callback(self._worker_ended)
            self._background.append(worker_task)

    async def stop(self) -> None:
        """Drain the worker (up to `drain_seconds`), stop the jobs, close the database."""
        if not self._started:
            return
        if self.worker is not None:
            self.worker.stop()
        worker_tasks = [task for task in self._background if task.get_name() == "worker"]
        if worker_tasks:
            grace = self.settings.drain_seconds + self.settings.progress_interval_seconds * 4 + 5
            await asyncio.wait(worker_tasks, timeout=grace)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        await self.database.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        self._started = False

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return  # stopped on request
        exc = task.exception()
        log.error("the worker stopped: %s", getattr(exc, "message", None) or repr(exc))
        self.worker_failed = True
        if self.on_worker_failure is not None:
            self.on_worker_failure()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Service]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def live_workers(self) -> list[WorkerInfo]:
        """The workers, in any process, seen within a lease."""
        return await self.store.live_workers(utcnow() - timedelta(seconds=self.settings.lease_seconds))

    async def ready_models(self) -> dict[ModelName, list[WorkerInfo]]:
        return models_ready(await self.live_workers())


def models_ready(workers: list[WorkerInfo]) -> dict[ModelName, list[WorkerInfo]]:
    """Models with at least one of `workers` ready with them loaded and no problem."""
    ready: dict[ModelName, list[WorkerInfo]] = {}
    for worker in workers:
        if worker.state == "ready" and worker.problem is None:
            for model in worker.models:
                ready.setdefault(model, []).append(worker)
    return ready


def worker_problems(workers: list[WorkerInfo]) -> list[str]:
    """What keeps `workers` from finishing tasks (results storage full...), one line each."""
    return [f"worker {worker.id}: {worker.problem}" for worker in workers if worker.problem]


def build_results(settings: Settings) -> tuple[ResultStore, Presigner | None]:
    """The results store `results_url` names, and itself again when links are presigned by it."""
    if settings.results_url is None:
        return LocalResultStore(settings.data_dir / "results"), None  # settings refuse presigned here
    try:
        from qwen_image_server.results.s3 import S3ResultStore
    except ModuleNotFoundError as exc:
        message = f"results_url={settings.results_url} needs boto3: pip install 'qwen-image-server[s3]'"
        raise InvalidParameter(message, param="results_url") from exc
    store = S3ResultStore.from_url(settings.results_url, endpoint_url=settings.s3_endpoint_url)
    return store, store if settings.results_links == "presigned" else None


def server_webhook_secret(settings: Settings) -> str:
    """The secret that signs callbacks of tasks made without an API key."""
    if settings.webhook_secret:
        return settings.webhook_secret
    return as_webhook_secret(load_or_create_secret(settings.data_dir / WEBHOOK_SECRET_FILE))


def callback_link_base(settings: Settings) -> str:
    """Where result links in callbacks point: `public_url`, else this server's own address (a
    wildcard address is replaced by the machine's name, which the receiver can at least resolve
    on the same network)."""
    if settings.public_url:
        return settings.public_url
    host = socket.getfqdn() if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def _callback_shapes() -> Mapping[str, CallbackShape]:
    # Imported here: the shapes belong to the API dialects, which import this module.
    from qwen_image_server.api.callbacks import CALLBACK_SHAPES

    return CALLBACK_SHAPES
