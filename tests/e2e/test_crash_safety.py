"""Crash safety with real processes: an API-only server and separate `qwen-image worker` processes,
killed with SIGKILL, stopped with SIGTERM, and a PostgreSQL task database restarted under load."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import CallbackReceiver
from tests.e2e.processes import (
    Process,
    all_tasks,
    free_port,
    start_api,
    start_worker,
    wait_for,
    wait_ready,
    wait_until,
)
from tests.e2e.throwaway_postgres import ThrowawayPostgres, why_unavailable

TASK = {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256", "num_inference_steps": 2, "seed": 7}
# Seconds of work for the tiny model on two cores: long enough to be caught mid-run.
SLOW_TASK = {**TASK, "num_inference_steps": 80}
# The callback receiver listens on loopback, which callbacks may reach only when allowed.
LOOPBACK_ALLOWED = {"QWEN_IMAGE_ALLOWED_FETCH_NETWORKS": "127.0.0.0/8"}


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def stored_files(data_dir: Path, task_id: str) -> set[str]:
    """The keys of the task's files in the local results store. A temporary file of a write cut short
    by a kill (`.tmp-...`) is left out: it matches no key, is never served, and goes with the folder."""
    folder = data_dir / "results" / task_id
    return {f"{task_id}/{path.name}" for path in folder.iterdir() if not path.name.startswith(".tmp-")}


def key_of(result: dict[str, Any]) -> str:
    """The results-store key in a result URL (`/v1/results/<key>?expires=...&sig=...`)."""
    return urlsplit(result["url"]).path.removeprefix("/v1/results/")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_a_worker_killed_mid_task_leaves_one_rerun_and_one_set_of_results(
    data_dir: Path, processes: list[Process], callback_receiver: CallbackReceiver
) -> None:
    port = free_port()
    api = start_api(data_dir, port, **LOOPBACK_ALLOWED)
    doomed = start_worker(data_dir, "doomed-worker", **LOOPBACK_ALLOWED)
    processes += [api, doomed]
    wait_ready(api, port)
    body = {**TASK, "n": 2, "partial_images": 1, "num_inference_steps": 60, "callback_url": callback_receiver.url}
    task_id = httpx.post(url(port, "/v1/tasks"), json=body, timeout=10).json()["id"]
    # Killed once the first attempt has stored a preview image: it leaves a file in the results store.
    mid_run = wait_until(
        port, task_id, lambda t: t["status"] == "running" and t["progress"]["step"] > 0 and t["previews"], "ran"
    )
    rescuer = start_worker(data_dir, "rescuer-worker", **LOOPBACK_ALLOWED)  # it starts while the lease runs out
    processes.append(rescuer)
    doomed.stop(signal.SIGKILL)
    assert doomed.popen.returncode == -signal.SIGKILL

    done = wait_for(port, task_id, "succeeded", "failed", timeout=120)
    assert done["status"] == "succeeded", rescuer.output()
    assert done["attempts"] == 2, "the killed run and the rerun"
    assert done["progress"]["total"] == 60 and mid_run["progress"]["step"] < 60, "killed mid-run"
    # What the client sees: the rerun's two images and two previews. Keys are `<task>/<index>...`, the
    # same in every run, so the rerun overwrote the preview the killed run had stored: the store
    # holds exactly the files the task names, none left over from the killed run.
    assert [result["index"] for result in done["results"]] == [0, 1]
    keys = {key_of(image) for image in done["results"] + done["previews"]}
    assert len(keys) == 4
    assert {key_of(image) for image in mid_run["previews"]} <= keys
    assert stored_files(data_dir, task_id) == keys
    for result in done["results"]:
        image = httpx.get(result["url"], timeout=10)
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (256, 256)
    # Exactly one final callback, for the rerun's outcome (the killed run never reached a final state).
    [callback] = callback_receiver.wait_for(1)
    event = callback.json()
    assert (event["type"], event["data"]["id"], event["data"]["attempts"]) == ("task.succeeded", task_id, 2)
    time.sleep(1.0)  # a second delivery would come within the sender's poll interval
    assert len(callback_receiver.received) == 1
    assert api.alive and rescuer.alive
    assert rescuer.stop(), rescuer.output()


def test_sigterm_lets_the_running_task_finish_within_drain_seconds(data_dir: Path, processes: list[Process]) -> None:
    port = free_port()
    api = start_api(data_dir, port)
    worker = start_worker(data_dir, "draining-worker", QWEN_IMAGE_DRAIN_SECONDS="60")
    processes += [api, worker]
    wait_ready(api, port)
    running_id = httpx.post(url(port, "/v1/tasks"), json=SLOW_TASK, timeout=10).json()["id"]
    wait_until(port, running_id, lambda t: t["status"] == "running" and t["progress"]["step"] > 0, "started")
    waiting_id = httpx.post(url(port, "/v1/tasks"), json=TASK, timeout=10).json()["id"]

    assert worker.stop(signal.SIGTERM, timeout=60), worker.output()

    finished = httpx.get(url(port, f"/v1/tasks/{running_id}"), timeout=10).json()
    assert finished["status"] == "succeeded" and finished["attempts"] == 1, "finished before the worker exited"
    waiting = httpx.get(url(port, f"/v1/tasks/{waiting_id}"), timeout=10).json()
    assert waiting["status"] == "queued" and waiting["attempts"] == 0, "a draining worker claims nothing more"


def test_sigterm_past_drain_seconds_gives_the_task_back(data_dir: Path, processes: list[Process]) -> None:
    port = free_port()
    api = start_api(data_dir, port)
    worker = start_worker(data_dir, "impatient-worker", QWEN_IMAGE_DRAIN_SECONDS="0.3")
    processes += [api, worker]
    wait_ready(api, port)
    task_id = httpx.post(url(port, "/v1/tasks"), json={**SLOW_TASK, "num_inference_steps": 250}, timeout=10).json()[
        "id"
    ]
    wait_until(port, task_id, lambda t: t["status"] == "running" and t["progress"]["step"] > 0, "started")

    signaled = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=30), worker.output()
    assert time.monotonic() - signaled < 15, "stopped at the next step after drain_seconds, not at the end"

    given_back = httpx.get(url(port, f"/v1/tasks/{task_id}"), timeout=10).json()
    assert given_back["status"] == "queued", "back in the queue at once, not after the lease"
    assert given_back["attempts"] == 0, "a drained attempt does not count"
    assert given_back["progress"]["step"] == 0


@dataclass
class SteadyClient:
    """Submits tasks one after another from a thread, each under its own Idempotency-Key, and
    retries a refused one (after a short pause) until it is accepted, as a careful client does."""

    port: int
    accepted: list[str] = field(default_factory=list)  # task ids, in order
    refusals: list[httpx.Response] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # no HTTP answer at all
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="steady-client", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def wait_accepted(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} tasks accepted; refusals: {self.refusals}"
            time.sleep(0.05)

    def wait_refused(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.refusals) < count:
            assert time.monotonic() < deadline, f"only {len(self.refusals)} refusals"
            time.sleep(0.05)

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as client:
            number = 0
            while not self._stop.is_set():
                number += 1
                self._submit(client, f"steady-{number}")
                time.sleep(0.3)  # about the pace one worker keeps up with

    def _submit(self, client: httpx.Client, key: str) -> None:
        while True:
            try:
                answer = client.post("/v1/tasks", json=TASK, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                self.failures.append(f"{key}: {exc!r}")
                return
            if answer.is_success:
                self.accepted.append(answer.json()["id"])
                return
            self.refusals.append(answer)
            time.sleep(0.2)


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_the_service_rides_out_a_database_restart_under_load(
    data_dir: Path, processes: list[Process], postgres: ThrowawayPostgres
) -> None:
    on_postgres = {"QWEN_IMAGE_DATABASE_URL": postgres.url}
    port = free_port()
    api = start_api(data_dir, port, **on_postgres)
    worker = start_worker(data_dir, "worker", **on_postgres)
    processes += [api, worker]
    wait_ready(api, port)
    client = SteadyClient(port)
    client.start()
    try:
        client.wait_accepted(3)
        postgres.stop("immediate")  # every connection of both processes breaks at once
        client.wait_refused(3)
        # Another dialect during the outage: the same refusal, in OpenAI's error shape.
        openai_body = {"model": "qwen-image", "prompt": "a fox", "size": "256x256"}
        openai = httpx.post(url(port, "/v1/images/generations"), json=openai_body, timeout=30)
        time.sleep(1)
        postgres.start()
        client.wait_accepted(len(client.accepted) + 3)
    finally:
        client.stop()

    assert not client.failures, "the API always answered"
    for refusal in client.refusals:  # 503 in the API's error shape, with a time to retry after
        assert refusal.status_code == 503, refusal.text
        assert refusal.json()["error"]["code"] == "database_unavailable"
        assert int(refusal.headers["retry-after"]) > 0
    assert openai.status_code == 503 and "retry-after" in openai.headers
    assert openai.json()["error"]["code"] == "database_unavailable"
    assert openai.json()["error"]["type"] == "server_error"
    for task_id in client.accepted:
        assert wait_for(port, task_id, "succeeded", "failed", timeout=60)["status"] == "succeeded"
    # None lost, none made twice: the tasks in the database are exactly those the client was given,
    # although some of its requests were cut off by the restart and sent again.
    assert len(set(client.accepted)) == len(client.accepted)
    assert sorted(task["id"] for task in all_tasks(port)) == sorted(client.accepted)
    wait_ready(api, port, timeout=10)  # the worker announces itself again
    assert api.alive and worker.alive
    for process in (api, worker):  # clean exits (tracebacks in the logs are allowed during the outage)
        process.stop()
        assert process.popen.returncode in (0, -signal.SIGTERM), process.output()
