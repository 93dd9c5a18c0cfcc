"""A results folder that is full or read-only fails the task's run, not the server: the task is
retried with backoff, the API and the worker stay up, /readyz says what is wrong, and once the disk
is back the task finishes. Real processes and a real small tmpfs (needs root; skipped elsewhere)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.processes import free_port, start_server, wait_for

RETRY_QUICKLY = {
    "QWEN_IMAGE_RETRY_BACKOFF_SECONDS": "0.3",
    "QWEN_IMAGE_RETRY_BACKOFF_MAX_SECONDS": "1",
    "QWEN_IMAGE_MAX_ATTEMPTS": "20",
}
TASK = {"model": "qwen-image", "prompt": "a fox", "size": "256x256", "num_inference_steps": 2, "seed": 3}


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` on `folder` (created), unmounted after; skips the test where it cannot be."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def results_on_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "data" / "results", "512k") as results:
        yield results


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the file to delete to free it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    return answer.status_code, answer.json()


def wait_for_readiness(port: int, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, body = readiness(port)
        if body["status"] == status:
            return body
        time.sleep(0.1)
    raise AssertionError(f"/readyz never said {status}; last: {body}")


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_failing_results_folder_fails_the_run_not_the_server(
    results_on_tmpfs: Path, tmp_path: Path, fault: str
) -> None:
    port = free_port()
    server = start_server(tmp_path / "data", port, "--models", "qwen-image", **RETRY_QUICKLY)
    try:
        if fault == "full":
            filler = fill(results_on_tmpfs)
            expected = os.strerror(errno.ENOSPC)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(results_on_tmpfs)], check=True)
            expected = os.strerror(errno.EROFS)
        task = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json=TASK, timeout=10).json()

        degraded = wait_for_readiness(port, "degraded")
        assert any(expected in problem for problem in degraded["problems"]), degraded
        assert readiness(port)[0] == 503
        time.sleep(1.5)  # several failed runs and backoffs later...
        assert server.alive, server.output()
        seen = httpx.get(f"http://127.0.0.1:{port}/v1/tasks/{task['id']}", timeout=10).json()
        assert seen["status"] in ("queued", "running"), seen
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200

        if fault == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(results_on_tmpfs)], check=True)
        done = wait_for(port, task["id"], "succeeded", "failed", timeout=60)
        assert done["status"] == "succeeded", done
        assert httpx.get(done["results"][0]["url"], timeout=10).status_code == 200
        assert wait_for_readiness(port, "ready")["problems"] == []
        output = server.output()
        assert expected in output and "Traceback" not in output, output
    finally:
        assert server.stop(), server.output()
