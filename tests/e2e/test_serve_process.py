"""`qwen-image serve` and `qwen-image worker` as real processes: crash and restart, drain, scale-out."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.processes import Process, free_port, start_server, wait_for, wait_ready

TASK = {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256", "num_inference_steps": 2, "seed": 7}


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


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_process_whose_worker_dies_exits_non_zero(data_dir: Path, tmp_path: Path, command: str) -> None:
    # A checkpoint folder that is not one: the worker's loop ends on loading the model. The process
    # must end too (status 1), so that a supervisor restarts it, instead of serving no worker.
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    port = ["--port", str(free_port())] if command == "serve" else []
    process = Process([command, *port, "--model", str(empty), "--data-dir", str(data_dir)], tmp_path / "died.log")
    try:
        code = process.popen.wait(timeout=120)
    finally:
        process.stop(signal.SIGKILL)
    assert code == 1, process.output()
    assert "no model_index.json" in process.output()
    assert "exiting with status 1" in process.output()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended while we looked
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def worker_pids(data_dir: Path) -> list[int]:
    with sqlite3.connect(data_dir / "tasks.db") as connection:
        return [row[0] for row in connection.execute("select pid from workers")]


def test_api_workers_run_several_api_processes_and_one_worker(data_dir: Path) -> None:
    port = free_port()
    server = start_server(data_dir, port, "--api-workers", "2", "--models", "qwen-image")
    try:
        assert "with 2 API processes" in server.output()
        children = children_of(server.popen.pid)
        [worker] = worker_pids(data_dir)
        assert worker in children and len(children) >= 3  # two API processes and the worker
        created = httpx.post(f"http://127.0.0.1:{port}/v1/tasks?wait=60", json=TASK, timeout=90).json()
        assert created["status"] == "succeeded"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:  # any process answers it
            assert all(client.get(f"/v1/tasks/{created['id']}").json()["status"] == "succeeded" for _ in range(20))
            # Whichever process a scrape reaches, it counts what all of them and the worker did.
            for _ in range(6):
                scraped = metric_values(client.get("/metrics").text)
                assert scraped["qwen_image_tasks_created_total"] == 1
                assert scraped["qwen_image_tasks_finished_total"] == 1
                assert scraped["qwen_image_http_requests_total"] >= 21
    finally:
        assert server.stop(), server.output()
    assert not still_running(children)  # none left behind


def test_api_workers_stop_when_their_worker_dies(data_dir: Path) -> None:
    port = free_port()
    server = start_server(data_dir, port, "--api-workers", "2", "--models", "qwen-image")
    [worker] = worker_pids(data_dir)
    children = children_of(server.popen.pid)
    os.kill(worker, signal.SIGKILL)
    assert not server.stop(timeout=60), server.output()  # it stopped on its own, not cleanly
    assert server.popen.returncode == 1  # so that a supervisor restarts the whole serve
    assert "the worker process ended" in server.output()
    assert not still_running(children)


def still_running(pids: list[int], timeout: float = 10) -> list[str]:
    """The command lines of those of `pids` still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z":
                    running.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)


def metric_values(text: str) -> dict[str, float]:
    """Each counter's samples of the Prometheus text `text`, summed over their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.name: sum(s.value for s in family.samples if s.name == sample.name)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith("_total")
    }
