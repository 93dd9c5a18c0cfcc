"""A task database that is locked by another process past the busy timeout, or whose disk is full,
is a transient fault: the API answers 503 with Retry-After in the caller's dialect (never 500), the
worker backs off and stays up, and once the lock is released or space freed the work goes on. Real
`serve --no-worker` and `worker` processes on one SQLite file; the full disk is a small tmpfs (needs
root; skipped elsewhere)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.processes import Process, free_port, start_api, start_worker, wait_for, wait_ready
from tests.e2e.test_storage_faults import RETRY_QUICKLY, TASK, fill, mounted_tmpfs

# Statements give up on a held lock after half a second (the default, 30 s, would make a slow test).
SHORT_BUSY = {"QWEN_IMAGE_SQLITE_BUSY_TIMEOUT_SECONDS": "0.5", **RETRY_QUICKLY}
# Many steps: the task is still running when the lock is taken, so its progress and end are written
# while the database is locked.
SLOW_TASK = {**TASK, "num_inference_steps": 80}
WAITING = "the task database is unreachable or busy"  # the worker's one line per outage
NOVITA_TXT2IMG = {"prompt": "a fox", "size": "256*256"}


def api_and_worker(data_dir: Path, processes: list[Process], **env: str) -> int:
    port = free_port()
    api = start_api(data_dir, port, **env)
    worker = start_worker(data_dir, "worker", **env)
    processes += [api, worker]
    wait_ready(api, port)
    return port


@contextmanager
def write_lock(database: Path) -> Iterator[None]:
    """Hold SQLite's write lock from this process, as a backup or a `sqlite3` shell might."""
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def assert_retry_later(port: int) -> None:
    """A create answers 503 with Retry-After, in the native and in Novita's shape."""
    native = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=TASK, timeout=30)
    assert native.status_code == 503, native.text
    assert int(native.headers["retry-after"]) >= 1
    assert native.json()["error"]["code"] == "database_unavailable"
    novita = httpx.post(f"http://127.0.0.1:{port}/v3/async/qwen-image-txt2img", json=NOVITA_TXT2IMG, timeout=30)
    assert novita.status_code == 503, novita.text
    assert int(novita.headers["retry-after"]) >= 1
    assert novita.json()["reason"] and "metadata" in novita.json()  # Novita's error shape


def test_a_database_locked_past_the_busy_timeout_is_ridden_out(tmp_path: Path, processes: list[Process]) -> None:
    data_dir = tmp_path / "data"
    port = api_and_worker(data_dir, processes, **SHORT_BUSY)
    api, worker = processes
    task = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=SLOW_TASK, timeout=30).json()
    wait_for(port, task["id"], "running", "succeeded")
    with write_lock(data_dir / "tasks.db"):
        assert_retry_later(port)
        time.sleep(3)  # several of the worker's writes time out meanwhile
        assert worker.alive and api.alive, worker.output()
    done = wait_for(port, task["id"], "succeeded", "failed", timeout=90)
    assert done["status"] == "succeeded", done
    assert httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=TASK, timeout=30).status_code == 202
    assert WAITING in worker.output() and "database is locked" in worker.output(), worker.output()
    for process in (api, worker):
        assert "Traceback" not in process.output(), process.output()


def test_a_full_database_disk_is_503_until_space_is_freed(tmp_path: Path, processes: list[Process]) -> None:
    with mounted_tmpfs(tmp_path / "db", "1m") as folder:
        database = {"QWEN_IMAGE_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'tasks.db'}"}
        port = api_and_worker(tmp_path / "data", processes, **database, **SHORT_BUSY)
        api, worker = processes
        filler = fill(folder)
        accepted, refused = [], None
        for _ in range(300):  # the first few creates may still fit in pages SQLite already has
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=TASK, timeout=30)
            assert answer.status_code in (202, 503), answer.text
            if answer.status_code == 503:
                refused = answer
                break
            accepted.append(answer.json()["id"])
        assert refused is not None, "the full disk never refused a create"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "database_unavailable"
        time.sleep(2)  # the worker meets the full disk too, and waits
        assert api.alive and worker.alive, worker.output()
        filler.unlink()
        again = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=TASK, timeout=30)
        assert again.status_code == 202, again.text
        for task_id in [*accepted, again.json()["id"]]:
            assert wait_for(port, task_id, "succeeded", "failed", timeout=120)["status"] == "succeeded"
        for process in (api, worker):
            assert "Traceback" not in process.output(), process.output()
