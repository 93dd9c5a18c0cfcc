"""`qwen-image serve` and `qwen-image worker` as real processes: crash and restart, drain, scale-out."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

TASK = {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256", "num_inference_steps": 2, "seed": 7}
FAST_ENV = {
    "QWEN_IMAGE_LEASE_SECONDS": "2",
    "QWEN_IMAGE_PROGRESS_INTERVAL_SECONDS": "0.1",
    "QWEN_IMAGE_POLL_INTERVAL_SECONDS": "0.1",
    "QWEN_IMAGE_DRAIN_SECONDS": "0.3",
    "HF_HUB_OFFLINE": "1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Process:
    """A `qwen-image` process with its output captured to a file (read it when a test fails)."""

    def __init__(self, args: list[str], log: Path, **env: str) -> None:
        self.log = log
        self._file = log.open("ab")
        full_env = {**os.environ, **FAST_ENV, **env, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "qwen_image_server", *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

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
    server = Process(
        ["serve", "--model", "tiny", "--port", str(port), "--data-dir", str(data_dir), *extra],
        data_dir.parent / f"serve-{port}.log",
        **env,
    )
    wait_ready(server, port)
    return server


def wait_ready(server: Process, port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.popen.poll() is None, server.output()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server never became ready:\n{server.output()}")


def wait_for(port: int, task_id: str, *statuses: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/v1/tasks/{task_id}", timeout=10).json()
        if task["status"] in statuses:
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never reached {statuses}")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def test_serve_says_what_it_serves_and_makes_images(data_dir: Path) -> None:
    port = free_port()
    server = start_server(data_dir, port)
    try:
        created = httpx.post(f"http://127.0.0.1:{port}/v1/tasks?wait=60", json=TASK, timeout=90).json()
        assert created["status"] == "succeeded"
        image = httpx.get(created["results"][0]["url"], timeout=10)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    finally:
        assert server.stop(), server.output()
    output = server.output()
    assert f"listening on http://127.0.0.1:{port}" in output
    assert "model qwen-image-edit-plus from tiny" in output
    assert "noise" in output
    assert (data_dir / "tasks.db").is_file()


def test_kill_9_while_running_then_restart_reruns_the_task(data_dir: Path) -> None:
    port = free_port()
    server = start_server(data_dir, port)
    done = httpx.post(f"http://127.0.0.1:{port}/v1/tasks?wait=60", json=TASK, timeout=90).json()
    slow = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json={**TASK, "num_inference_steps": 40}, timeout=10).json()
    running = wait_for(port, slow["id"], "running")
    while running["progress"]["step"] < 2:
        running = wait_for(port, slow["id"], "running")
    server.stop(signal.SIGKILL)

    port = free_port()
    server = start_server(data_dir, port)
    try:
        rerun = wait_for(port, slow["id"], "succeeded", "failed")
        assert rerun["status"] == "succeeded" and rerun["attempts"] == 2
        earlier = httpx.get(f"http://127.0.0.1:{port}/v1/tasks/{done['id']}", timeout=10).json()
        assert earlier["status"] == "succeeded"
        # The URL handed out before the crash (its path; the port changed) still serves the image.
        old = urlsplit(done["results"][0]["url"])
        assert httpx.get(f"http://127.0.0.1:{port}{old.path}?{old.query}", timeout=10).status_code == 200
    finally:
        server.stop()


def test_sigterm_gives_the_running_task_back_to_the_queue(data_dir: Path) -> None:
    port = free_port()
    server = start_server(data_dir, port)
    slow = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json={**TASK, "num_inference_steps": 60}, timeout=10).json()
    running = wait_for(port, slow["id"], "running")
    while running["progress"]["step"] < 1:
        running = wait_for(port, slow["id"], "running")
    assert server.stop(signal.SIGTERM, timeout=30), server.output()

    port = free_port()
    server = start_server(data_dir, port, QWEN_IMAGE_LEASE_SECONDS="600")  # no rescue: only a release requeues
    try:
        finished = wait_for(port, slow["id"], "succeeded", "failed", timeout=120)
        assert finished["status"] == "succeeded"
        assert finished["attempts"] == 1, "a drained attempt does not count"
    finally:
        server.stop()


def test_an_api_only_server_and_a_separate_worker_share_the_queue(data_dir: Path) -> None:
    port = free_port()
    api = Process(
        ["serve", "--model", "tiny", "--no-worker", "--port", str(port), "--data-dir", str(data_dir)],
        data_dir.parent / "api.log",
    )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                readiness = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, api.output()
                time.sleep(0.2)
        assert readiness.status_code == 503, "no worker yet"
        queued = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=TASK, timeout=10).json()
        assert queued["status"] == "queued"
        worker = Process(["worker", "--model", "tiny", "--data-dir", str(data_dir)], data_dir.parent / "worker.log")
        finished = wait_for(port, queued["id"], "succeeded", "failed")
        assert finished["status"] == "succeeded", worker.output()
        wait_ready(api, port)
    finally:
        if worker is not None:
            assert worker.stop(), worker.output()
        api.stop()
