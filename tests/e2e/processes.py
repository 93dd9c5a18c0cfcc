"""`qwen-image serve` and `qwen-image worker` as real processes, and what the e2e tests ask of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from bench.common import list_all_tasks, wait_until_ready

# Short leases and polls, so that crashes are noticed and tasks picked up within a second or two.
FAST_ENV = {
    "QWEN_IMAGE_LEASE_SECONDS": "2",
    "QWEN_IMAGE_PROGRESS_INTERVAL_SECONDS": "0.1",
    "QWEN_IMAGE_POLL_INTERVAL_SECONDS": "0.1",
    "QWEN_IMAGE_DRAIN_SECONDS": "0.3",
    "HF_HUB_OFFLINE": "1",
}
# One model only: a worker that loads one tiny model starts in a few seconds.
ONE_TINY_MODEL = ("--model", "tiny", "--models", "qwen-image")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Process:
    """A `qwen-image` process with its output captured to a file (read it when a test fails)."""

    def __init__(self, args: list[str], log: Path, **env: str) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._file = log.open("ab")
        full_env = {**os.environ, **FAST_ENV, **env, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "qwen_image_server", *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> bool:
        """Send `sig`; True when the process ended cleanly (uvicorn re-raises SIGTERM after a
        graceful shutdown, so a clean end is exit code 0 or death by that same SIGTERM)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        code = self.popen.wait(timeout=timeout)
        self._file.close()
        return code in (0, -signal.SIGTERM) and "Traceback" not in self.output()


def start_server(data_dir: Path, port: int, *extra: str, **env: str) -> Process:
    """`serve` with its in-process worker, once it is ready."""
    server = Process(
        ["serve", "--model", "tiny", "--port", str(port), "--data-dir", str(data_dir), *extra],
        data_dir.parent / f"serve-{port}.log",
        **env,
    )
    wait_ready(server, port)
    return server


def start_api(data_dir: Path, port: int, **env: str) -> Process:
    """`serve --no-worker` (the API alone, serving qwen-image); it answers at once, but /readyz
    says 503 until a worker has the model loaded."""
    args = ["serve", *ONE_TINY_MODEL, "--no-worker", "--port", str(port), "--data-dir", str(data_dir)]
    return Process(args, data_dir.parent / f"api-{port}.log", **env)


def start_worker(data_dir: Path, name: str, **env: str) -> Process:
    """`worker` on the same data dir (and database, if `QWEN_IMAGE_DATABASE_URL` is in `env`)."""
    return Process(["worker", *ONE_TINY_MODEL, "--data-dir", str(data_dir)], data_dir.parent / f"{name}.log", **env)


def wait_ready(server: Process, port: int, timeout: float = 90) -> None:
    wait_until_ready(f"http://127.0.0.1:{port}", alive=lambda: server.alive, explain=server.output, timeout=timeout)


def wait_until(
    port: int, task_id: str, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90
) -> dict[str, Any]:
    """Poll the task until `condition` holds for it; `what` names the condition in the failure."""
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = httpx.get(f"http://127.0.0.1:{port}/v1/tasks/{task_id}", timeout=10).json()
        if condition(task):
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never {what}; last seen: {task}")


def wait_for(port: int, task_id: str, *statuses: str, timeout: float = 90) -> dict[str, Any]:
    return wait_until(port, task_id, lambda task: task["status"] in statuses, f"reached {statuses}", timeout)


def all_tasks(port: int) -> list[dict[str, Any]]:
    """Every task the API lists, page by page."""
    return list_all_tasks(f"http://127.0.0.1:{port}", timeout=10)
