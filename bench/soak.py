"""Soak test: tasks in through an API-only server, worker processes killed at random and restarted.

    python bench/soak.py --tasks 200 --seconds 300 --workers 2

`serve --no-worker` and `--workers` `qwen-image worker` processes share a SQLite task database (the
tiny model, 2-step 256x256 tasks, short leases). For `--seconds`, the tasks are submitted at an even
pace (each under its own Idempotency-Key, retried until accepted) while a killer SIGKILLs a random
worker every `--kill-every` seconds or so, preferring one that is running a task, and starts a new
one in its place. Then the kills stop and every task must end.

What is checked, through the API and the results folder: every accepted task is listed once and
succeeded, with exactly its `n` results (indexes 0..n-1, distinct keys), each downloadable, and the
store holds no other file of it. A task that failed, never ended or lacks a result is `lost`; one
listed twice, a task nobody submitted, or a result too many is `duplicated`. A worker that stops
without being killed (its process exits, or its worker loop ends) is reported too.

The last line is the verdict alone, `soak_lost=0 duplicated=0`; the exit status is 0 only then, and
when no worker died unprompted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as `python bench/soak.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.common import list_all_tasks, wait_until_ready

TASK = {"model": "qwen-image", "prompt": "a lighthouse in a storm", "size": "256x256", "num_inference_steps": 2}
# Quick leases and polls: a killed worker's task is back in the queue within a few seconds. Many
# attempts: a task the killer hits three times is the killer's luck, not a fault of the service.
PROCESS_ENV = {
    "QWEN_IMAGE_PROGRESS_INTERVAL_SECONDS": "0.1",
    "QWEN_IMAGE_POLL_INTERVAL_SECONDS": "0.1",
    "QWEN_IMAGE_DRAIN_SECONDS": "0.3",
    "QWEN_IMAGE_MAX_ATTEMPTS": "20",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    # One torch thread per worker: several workers share a few cores, and torch's own thread pool
    # per process would oversubscribe them (its threads spin while they wait for each other).
    "OMP_NUM_THREADS": "1",
}
ONE_TINY_MODEL = ("--model", "tiny", "--models", "qwen-image")


@dataclass(frozen=True)
class SoakConfig:
    tasks: int = 60
    seconds: float = 60.0  # how long tasks are submitted and workers killed
    workers: int = 2
    kill_every: float = 5.0  # mean seconds between kills
    lease_seconds: float = 2.0
    finish_timeout: float = 300.0  # for the tasks to end once the kills stop
    seed: int = 0
    work_dir: Path | None = None  # default: a temporary folder, removed at the end


@dataclass
class SoakReport:
    submitted: int = 0
    succeeded: int = 0
    kills: int = 0
    kills_mid_task: int = 0  # the killed worker still held a running task afterwards (checked)
    reruns: int = 0  # tasks that ran more than once
    refusals: int = 0  # submissions answered with an error (then retried)
    worker_deaths: list[str] = field(default_factory=list)  # workers that stopped without being killed
    lost: list[str] = field(default_factory=list)  # "task id: why"
    duplicated: list[str] = field(default_factory=list)
    ready_seconds: float = 0.0  # until the first worker had its model loaded
    finish_seconds: float = 0.0  # from the last kill until every task had ended
    seconds: float = 0.0  # all told

    @property
    def verdict(self) -> str:
        return f"soak_lost={len(self.lost)} duplicated={len(self.duplicated)}"


class Spawned:
    """A `qwen-image` process with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "qwen_image_server", *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **PROCESS_ENV, **env},
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> None:
        if self.alive:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """The API server and the workers of one soak, in one folder."""

    def __init__(self, root: Path, config: SoakConfig) -> None:
        self.root = root
        self.config = config
        self.data_dir = root / "data"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._env = {"QWEN_IMAGE_LEASE_SECONDS": str(config.lease_seconds)}
        self._started = 0
        args = ["serve", *ONE_TINY_MODEL, "--no-worker", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.api = Spawned(args, root / "api.log", self._env)
        self.workers: list[Spawned] = []

    def start_worker(self) -> None:
        self._started += 1
        args = ["worker", *ONE_TINY_MODEL, "--data-dir", str(self.data_dir)]
        self.workers.append(Spawned(args, self.root / f"worker-{self._started}.log", self._env))

    def replace(self, worker: Spawned) -> None:
        self.workers.remove(worker)
        self.start_worker()

    def wait_ready(self, timeout: float = 120) -> None:
        explain = f"see the logs in {self.root}"
        wait_until_ready(self.base_url, alive=lambda: self.api.alive, explain=lambda: explain, timeout=timeout)

    def busy_workers(self) -> list[Spawned]:
        """The live workers that hold a running task now."""
        holders = self._running_task_holders()
        return [w for w in self.workers if w.alive and any(h.startswith(_id_prefix(w)) for h in holders)]

    def holds_a_running_task(self, worker: Spawned) -> bool:
        return any(holder.startswith(_id_prefix(worker)) for holder in self._running_task_holders())

    def _running_task_holders(self) -> list[str]:
        # Straight from the database, read-only: the API does not show which worker runs a task.
        with contextlib.closing(sqlite3.connect(f"file:{self.data_dir / 'tasks.db'}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT worker_id FROM tasks WHERE status = 'running'").fetchall()
        return [row[0] for row in rows if row[0]]

    def unprompted_deaths(self) -> list[str]:
        """Workers that stopped working on their own: the process exited, or its worker loop ended
        (the process then lives on without one, and says so in its log)."""
        deaths = [f"{w.log.name}: exited with {w.popen.returncode}" for w in self.workers if not w.alive]
        logs = sorted(self.root.glob("worker-*.log"))
        return deaths + [f"{log.name}: {line}" for log in logs for line in _lines_of_worker_death(log)]

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            process.terminate()


def _lines_of_worker_death(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "the worker stopped" in line]


def _id_prefix(worker: Spawned) -> str:
    """How the ids of a worker process begin: `<host>-<pid>-` (worker/worker.py)."""
    return f"{socket.gethostname()}-{worker.pid}-"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Submitter:
    """Submits the tasks at an even pace from a thread; a refused one is retried under its key."""

    def __init__(self, base_url: str, count: int, seconds: float, rng: random.Random) -> None:
        self.base_url = base_url
        self.plan = [rng.choice((1, 2)) for _ in range(count)]  # images per task
        self.interval = seconds / max(count, 1)
        self.accepted: dict[str, int] = {}  # task id -> images asked for
        self.refusals = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="submitter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self.error is not None or self._thread.is_alive():
            raise RuntimeError(f"the tasks could not all be submitted: {self.error!r}")

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=30) as client:
                started = time.monotonic()
                for number, images in enumerate(self.plan):
                    time.sleep(max(0.0, started + number * self.interval - time.monotonic()))
                    self._submit(client, f"soak-{number}", images)
        except Exception as exc:
            self.error = exc

    def _submit(self, client: httpx.Client, key: str, images: int) -> None:
        for _ in range(100):
            answer = client.post("/v1/tasks", json={**TASK, "n": images}, headers={"Idempotency-Key": key})
            if answer.is_success:
                self.accepted[answer.json()["id"]] = images
                return
            self.refusals += 1
            time.sleep(0.5)
        raise RuntimeError(f"task {key} was refused 100 times; the last answer: {answer.text}")


def run_soak(config: SoakConfig) -> SoakReport:
    """Run one soak and check its outcome; see the module docstring."""
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        return _soak_in(config.work_dir, config)
    with tempfile.TemporaryDirectory(prefix="qwen-image-soak-") as root:
        return _soak_in(Path(root), config)


def _soak_in(root: Path, config: SoakConfig) -> SoakReport:
    rng = random.Random(config.seed)
    started = time.monotonic()
    cluster = Cluster(root, config)
    report = SoakReport()
    try:
        for _ in range(config.workers):
            cluster.start_worker()
        cluster.wait_ready()
        report.ready_seconds = time.monotonic() - started
        submitter = Submitter(cluster.base_url, config.tasks, config.seconds, rng)
        submitter.start()
        _kill_at_random(cluster, report, rng, until=time.monotonic() + config.seconds)
        submitter.finish(timeout=config.finish_timeout)
        report.submitted, report.refusals = len(submitter.plan), submitter.refusals
        kills_over = time.monotonic()
        listed = _wait_until_all_end(cluster.base_url, set(submitter.accepted), config.finish_timeout)
        report.finish_seconds = time.monotonic() - kills_over
        with httpx.Client(timeout=30) as client:
            check_tasks(cluster.data_dir / "results", submitter.accepted, listed, client, report)
        report.worker_deaths = cluster.unprompted_deaths()
    finally:
        cluster.stop()
    report.seconds = time.monotonic() - started
    return report


def _kill_at_random(cluster: Cluster, report: SoakReport, rng: random.Random, until: float) -> None:
    """About every `kill_every` seconds until `until`: SIGKILL a worker (one that runs a task, if
    one does within another `kill_every` seconds) and start a new one in its place."""
    mean = cluster.config.kill_every
    while True:
        pause = rng.uniform(0.5 * mean, 1.5 * mean)
        if time.monotonic() + pause >= until:
            time.sleep(max(0.0, until - time.monotonic()))
            return
        time.sleep(pause)
        victim = _choose_victim(cluster, rng, patience=min(mean, max(0.0, until - time.monotonic())))
        if victim is None:
            continue
        victim.kill()
        report.kills += 1
        if cluster.holds_a_running_task(victim):  # still, after its death: it was caught mid-task
            report.kills_mid_task += 1
        cluster.replace(victim)


def _choose_victim(cluster: Cluster, rng: random.Random, patience: float) -> Spawned | None:
    """A worker that runs a task, if one does within `patience` seconds; else any live worker (all
    may be starting up, after earlier kills)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        busy = cluster.busy_workers()
        if busy:
            return rng.choice(busy)
        time.sleep(0.05)
    alive = [worker for worker in cluster.workers if worker.alive]
    return rng.choice(alive) if alive else None


def _wait_until_all_end(base_url: str, ids: set[str], timeout: float) -> list[dict[str, Any]]:
    """Every task the API lists, once none of `ids` is queued or running (or at `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = list_all_tasks(base_url)
        unfinished = [task for task in listed if task["id"] in ids and task["status"] in ("queued", "running")]
        if not unfinished or time.monotonic() > deadline:
            return listed
        time.sleep(0.5)


def check_tasks(
    results_dir: Path,
    accepted: dict[str, int],
    listed: list[dict[str, Any]],
    client: httpx.Client,
    report: SoakReport,
) -> None:
    """Fill the report's verdict from the tasks the API lists (`listed`, native task objects) and the
    results folder: every accepted task (id -> images asked for) listed once, succeeded, with its own
    images, each downloadable with `client`."""
    for task_id, times in Counter(task["id"] for task in listed).items():
        if times > 1:
            report.duplicated.append(f"{task_id}: listed {times} times")
        if task_id not in accepted:
            report.duplicated.append(f"{task_id}: a task nobody submitted")
    by_id = {task["id"]: task for task in listed}
    for task_id, images in accepted.items():
        task = by_id.get(task_id)
        if task is None:
            report.lost.append(f"{task_id}: not listed")
            continue
        report.reruns += task["attempts"] > 1
        lost, duplicated = _problems_of(results_dir, task, images, client)
        report.lost += [f"{task_id}: {problem}" for problem in lost]
        report.duplicated += [f"{task_id}: {problem}" for problem in duplicated]
        report.succeeded += not lost and not duplicated


def _problems_of(
    results_dir: Path, task: dict[str, Any], images: int, client: httpx.Client
) -> tuple[list[str], list[str]]:
    """What one task's outcome lacks (lost) and has too much of (duplicated)."""
    if task["status"] != "succeeded":
        return [f"{task['status']} after {task['attempts']} attempts ({task['error']})"], []
    keys = [_key_of(result) for result in task["results"]]
    lost = [f"no result {index}" for index in range(images) if index not in {r["index"] for r in task["results"]}]
    duplicated = [f"{len(keys)} results ({len(set(keys))} distinct) for {images} images"] if len(keys) > images else []
    for result in task["results"]:
        answer = client.get(result["url"])
        if answer.status_code != 200 or not answer.content:
            lost.append(f"result {_key_of(result)} unreadable ({answer.status_code})")
    named = set(keys) | {_key_of(preview) for preview in task["previews"]}
    folder = results_dir / task["id"]
    # `.tmp-` files are writes cut short by a kill: never served, they go with the task's folder.
    files = folder.iterdir() if folder.is_dir() else iter(())
    stored = {f"{task['id']}/{path.name}" for path in files if not path.name.startswith(".tmp-")}
    if stored - named:
        duplicated.append(f"files in the store that no result names: {sorted(stored - named)}")
    return lost, duplicated


def _key_of(result: dict[str, Any]) -> str:
    return urlsplit(str(result["url"])).path.removeprefix("/v1/results/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=SoakConfig.tasks, help="tasks to submit")
    parser.add_argument("--seconds", type=float, default=SoakConfig.seconds, help="how long to submit and kill")
    parser.add_argument("--workers", type=int, default=SoakConfig.workers, help="worker processes")
    parser.add_argument("--kill-every", type=float, default=SoakConfig.kill_every, help="mean seconds between kills")
    parser.add_argument("--lease-seconds", type=float, default=SoakConfig.lease_seconds)
    parser.add_argument("--seed", type=int, default=SoakConfig.seed, help="seed of the kills and task sizes")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (logs, data)")
    args = parser.parse_args()
    config = SoakConfig(
        tasks=args.tasks,
        seconds=args.seconds,
        workers=args.workers,
        kill_every=args.kill_every,
        lease_seconds=args.lease_seconds,
        seed=args.seed,
        work_dir=args.keep,
    )
    print(
        f"soak: {config.tasks} tasks over {config.seconds:g} s, {config.workers} workers, "
        f"a SIGKILL every ~{config.kill_every:g} s, lease {config.lease_seconds:g} s, seed {config.seed}",
        flush=True,
    )
    report = run_soak(config)
    print(f"kills: {report.kills} ({report.kills_mid_task} mid-task); tasks run more than once: {report.reruns}")
    print(f"refused submissions (retried): {report.refusals}")
    print(
        f"took {report.seconds:.1f} s: {report.ready_seconds:.1f} s to start, then {config.seconds:g} s of kills, "
        f"then {report.finish_seconds:.1f} s until every task had ended"
    )
    print(
        f"succeeded: {report.succeeded}/{report.submitted}; workers that died unprompted: {len(report.worker_deaths)}"
    )
    for line in (report.lost + report.duplicated + report.worker_deaths)[:20]:
        print(f"  {line}")
    print(report.verdict)
    sys.exit(0 if not (report.lost or report.duplicated or report.worker_deaths) else 1)


if __name__ == "__main__":
    main()
