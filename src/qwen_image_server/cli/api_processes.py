"""`serve --api-workers N`: N API processes on one port, and the worker in a process of its own.

One API process answers about what one core can (docs/performance.md); a host with more cores
serves more by running more of them. uvicorn's supervisor binds the port and starts the N processes
(spawned: fresh interpreters), restarting any that dies; the kernel spreads connections over them.
Each builds its app from the settings this process resolved, handed down as JSON in the environment
(`SETTINGS_ENV`), so flags, the config file and the `--model` defaults apply to all of them alike.

None of them runs a worker: a model belongs in one process (it holds the GPU). Unless `--no-worker`,
the worker runs in a spawned process of its own, exactly as `qwen-image worker` would; if it stops on
an error, the API processes are stopped too and `serve` exits 1, as a one-process `serve` does.

What the processes share is the task database: on PostgreSQL they hear each other's changes at once
(LISTEN/NOTIFY); on SQLite a change made in another process is seen by the next poll (`?wait=` and
event streams poll every quarter second), and writers of different processes queue on SQLite's
lock, so PostgreSQL is the database for several API processes under load (docs/deploy.md).
Their metrics meet in `DATA_DIR/metrics` (prometheus_client's multi-process mode, docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from qwen_image_server.metrics.shared_dir import use_shared_dir
from qwen_image_server.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

SETTINGS_ENV = "QWEN_IMAGE_SERVE_SETTINGS"
WORKER_FAILED = 1


def app_from_environment() -> FastAPI:
    """The app of one API process (uvicorn calls this in each; see the module docstring)."""
    from qwen_image_server.api.app import create_app
    from qwen_image_server.service import Service

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(Service.build(settings, run_worker=False))


def serve_api_processes(settings: Settings) -> int:
    """Run `settings.api_workers` API processes and the worker until stopped; the exit status."""
    import uvicorn

    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    if settings.metrics:  # each process writes its figures there; any one's /metrics reads them all
        use_shared_dir(settings.data_dir / "metrics")
    worker = _start_worker(settings) if settings.worker else None
    stopping, worker_ended = threading.Event(), threading.Event()
    if worker is not None:
        threading.Thread(target=_stop_when_it_ends, args=(worker, stopping, worker_ended), daemon=True).start()
    try:
        uvicorn.run(
            f"{__name__}:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.api_workers,
            log_level="warning",
        )
    finally:
        stopping.set()
        if worker is not None:
            _stop(worker, settings.drain_seconds)
    return WORKER_FAILED if worker_ended.is_set() else 0


def _start_worker(settings: Settings) -> BaseProcess:
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(settings.model_dump_json(),), name="qwen-image-worker"
    )
    process.start()
    return process


def _worker_main(settings_json: str) -> None:
    from qwen_image_server.cli.serve import run_worker

    service = asyncio.run(run_worker(Settings.model_validate_json(settings_json)))
    raise SystemExit(WORKER_FAILED if service.worker_failed else 0)


def _stop_when_it_ends(worker: BaseProcess, stopping: threading.Event, ended: threading.Event) -> None:
    """A worker that ends on its own (it failed, or was killed) ends the API processes too: a
    `serve` whose worker is gone would take tasks that never run; its supervisor restarts it."""
    worker.join()
    if not stopping.is_set():
        ended.set()
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's supervisor stops its processes and returns


def _stop(worker: BaseProcess, drain_seconds: float) -> None:
    """SIGTERM (the worker drains its running task), then wait; SIGKILL past the drain time."""
    if worker.is_alive():
        with contextlib.suppress(ProcessLookupError):
            worker.terminate()
    worker.join(drain_seconds + 10)
    if worker.is_alive():
        worker.kill()
        worker.join()
