"""Scale-out: tasks per second with 1, 2, 4 and 8 worker processes on one PostgreSQL database, and
the scaling efficiency (tasks/s at N / (N x tasks/s at 1); the target is >= 0.8 at 8).

Each worker is a real worker process (the `Service` and `Worker` that `qwen-image worker` runs: task
store on PostgreSQL with LISTEN/NOTIFY, claims, leases, heartbeats, results store, completion) with
one change: the engine is `bench.fake_engine`'s stand-in, whose denoising steps sleep `--step-ms`
each, because two cores cannot run eight real pipelines and the question here is the service's
share. (`qwen-image worker` always builds the real engine, so the worker process is this script in
`--worker` mode, which runs `cli/serve.py`'s `run_worker` with the stand-in engine.) Each worker has its
own data dir and local results folder: nothing is shared but the database.

The submitter has no API: it creates the tasks straight in the store, all at once, once every
worker is ready, then waits until all have succeeded. Tasks per second is the number of tasks over
the time from the first create to the last `finished_at`. Per level, a fresh database on the server
at `--admin-url` (default $QWEN_IMAGE_TEST_POSTGRES_URL).

    .venv/bin/python bench/scale_out.py [--workers 1,2,4,8] [--tasks-per-worker 6] [--steps 10]
                                        [--step-ms 100] [--json PATH]

The last line is `scale_out_efficiency_8=X` (efficiency at the largest level run, named for it).

In `--worker` mode (what the bench and tests/e2e/test_multi_host.py start) the settings come from
the environment as for `qwen-image worker` (QWEN_IMAGE_DATABASE_URL, QWEN_IMAGE_RESULTS_URL, ...);
the stand-in's images carry the host name (`socket.gethostname()`) in a PNG text chunk `host`, so
a test can tell which host made a result.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/scale_out.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, PngImagePlugin

from bench.common import emit, machine, note, table, throwaway_database
from bench.fake_engine import InstantEngine
from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.tasks.model import NewTask, TaskStatus
from qwen_image_server.tasks.sql import SqlTaskStore

SCRIPT = Path(__file__).resolve()
READY_TIMEOUT_S = 120.0
FINISH_TIMEOUT_S = 300.0


# -- a worker process with the stand-in engine ----------------------------------------------------


class HostStampedEngine(InstantEngine):
    """The stand-in engine, whose one image names the host that made it (PNG text chunk `host`)."""

    def __init__(self, step_seconds: float) -> None:
        super().__init__(step_seconds)
        self._png = stamped_png(socket.gethostname())


def stamped_png(host: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("host", host)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def host_of(png: bytes) -> str:
    """The host a stand-in image names."""
    with Image.open(io.BytesIO(png)) as image:
        return str(image.info["host"])


def stand_in_worker(data_dir: Path, step_seconds: float) -> None:
    """`qwen-image worker`'s own loop (cli/serve.py `run_worker`) with the stand-in engine: run until
    SIGTERM, then drain; exit 1 if the worker failed."""
    import logging

    from qwen_image_server.cli.serve import run_worker
    from qwen_image_server.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = asyncio.run(run_worker(load_settings(data_dir=data_dir), HostStampedEngine(step_seconds)))
    if service.worker_failed:
        raise SystemExit(1)


def worker_command(data_dir: Path, step_ms: float) -> list[str]:
    """The command line of a stand-in worker process."""
    return [sys.executable, str(SCRIPT), "--worker", "--data-dir", str(data_dir), "--step-ms", str(step_ms)]


# -- the bench ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    workers: int
    tasks: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.tasks / self.seconds


async def wait_ready(store: SqlTaskStore, count: int, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("a worker process exited before it was ready (see its log)")
        since = datetime.now(UTC) - timedelta(seconds=60)
        ready = [worker for worker in await store.live_workers(since) if worker.state == "ready"]
        if len(ready) >= count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{count} workers were not ready in {READY_TIMEOUT_S:g} s")


async def measure_level(database_url: str, workers: int, args: argparse.Namespace, root: Path) -> Level:
    env = {**os.environ, "QWEN_IMAGE_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
    store = SqlTaskStore.open(database_url)
    await store.start()  # creates the schema before the workers race to
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with AsyncExitStack() as logs:
            for index in range(workers):
                data_dir = root / f"n{workers}-w{index}"
                log = logs.enter_context((root / f"n{workers}-w{index}.log").open("wb"))
                command = worker_command(data_dir, args.step_ms)
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
            await wait_ready(store, workers, processes)
            tasks = workers * args.tasks_per_worker
            request = GenerationRequest.create(
                model=ModelName.QWEN_IMAGE, prompt="a fox", width=256, height=256, num_inference_steps=args.steps
            )
            started = datetime.now(UTC)
            for _ in range(tasks):
                await store.create(NewTask(request))
            await wait_all_succeeded(store, tasks)
            finished = await last_finished(store, tasks)
            return Level(workers, tasks, (finished - started).total_seconds())
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        await store.close()


async def wait_all_succeeded(store: SqlTaskStore, tasks: int) -> None:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while await store.count_tasks(statuses=[TaskStatus.SUCCEEDED]) < tasks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tasks did not all succeed in {FINISH_TIMEOUT_S:g} s")
        await asyncio.sleep(0.1)


async def last_finished(store: SqlTaskStore, tasks: int) -> datetime:
    page = await store.list_tasks(status=TaskStatus.SUCCEEDED, limit=tasks)
    return max(task.finished_at for task in page.tasks if task.finished_at is not None)


async def run(args: argparse.Namespace) -> list[Level]:
    levels: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="qwen-image-scale-out-") as root:
        for workers in args.workers:
            async with throwaway_database(args.admin_url) as url:
                level = await measure_level(url, workers, args, Path(root))
            note(f"{workers} workers: {level.tasks} tasks in {level.seconds:.2f} s")
            levels.append(level)
    return levels


def report(levels: list[Level], args: argparse.Namespace) -> float:
    single = levels[0].per_second / levels[0].workers
    ideal_per_worker = 1 / (args.steps * args.step_ms / 1000)
    print(
        f"Scale-out on one PostgreSQL: stand-in engine, {args.steps} steps x {args.step_ms:g} ms per task "
        f"(ideal {ideal_per_worker:.2f} tasks/s per worker), {args.tasks_per_worker} tasks per worker"
    )
    rows = []
    for level in levels:
        efficiency = level.per_second / (level.workers * single)
        rows.append([level.workers, level.tasks, level.seconds, level.per_second, efficiency])
    print(table(["workers", "tasks", "seconds", "tasks/s", "efficiency"], rows))
    largest = levels[-1]
    headline = round(largest.per_second / (largest.workers * single), 3)
    record: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "workers": args.workers,
            "tasks_per_worker": args.tasks_per_worker,
            "steps": args.steps,
            "step_ms": args.step_ms,
            "engine": "bench.scale_out.HostStampedEngine (bench.fake_engine.InstantEngine)",
        },
        "levels": [
            dict(zip(("workers", "tasks", "seconds", "tasks_per_s", "efficiency"), _rounded(row), strict=True))
            for row in rows
        ],
    }
    emit(record, (f"scale_out_efficiency_{largest.workers}", headline), args.json)
    return headline


def _rounded(row: list[Any]) -> list[Any]:
    return [round(value, 3) if isinstance(value, float) else value for value in row]


def main(argv: list[str] | None = None) -> float | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--worker", action="store_true", help="run one stand-in worker process (used by the bench)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the worker's data dir (--worker)")
    parser.add_argument("--admin-url", default=os.environ.get("QWEN_IMAGE_TEST_POSTGRES_URL"), help="PostgreSQL URL")
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--tasks-per-worker", type=int, default=6, help="tasks per worker at each level [6]")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per task [10]")
    parser.add_argument("--step-ms", type=float, default=100.0, help="the stand-in's time per step [100]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    if args.worker:
        stand_in_worker(args.data_dir, args.step_ms / 1000)
        return None
    if not args.admin_url:
        parser.error("--admin-url or QWEN_IMAGE_TEST_POSTGRES_URL is required")
    return report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
