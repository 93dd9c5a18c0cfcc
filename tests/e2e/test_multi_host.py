"""Several hosts, simulated for real: the API (`qwen-image serve --no-worker`, root namespace) and two
worker hosts, each a network namespace of its own (tests/e2e/hosts.py) with its own data dir. They
share nothing but a PostgreSQL database (through a TCP forwarder on the bridge) and an S3 bucket (a
moto server on the bridge's address).

The workers are stand-in worker processes (`bench/scale_out.py --worker`: the real `Service` and
`Worker` with the stand-in engine, whose steps sleep, because `qwen-image worker` always builds the
real engine), so a task's length is set by its steps, and each image names the host that made it.

One cluster serves the module's tests, in order; each leaves every host on the network. The partition
test runs last (it found two defects, fixed: a cut-off worker stopped on a bare OSError from a new
connection, and a late run overwrote the rerun's images before its fenced completion was refused).
"""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from bench.common import create_database, drop_database
from bench.scale_out import host_of, worker_command
from PIL import Image

from tests.e2e import hosts
from tests.e2e.processes import FAST_ENV, Process, free_port, start_api, wait_for, wait_ready
from tests.results.conftest import DUMMY_AWS, moto_server

POSTGRES_ENV = "QWEN_IMAGE_TEST_POSTGRES_URL"
BUCKET = "qwen-multi-host"
STEP_MS = 100
LEASE_SECONDS = 3
HOSTS = ("host-a", "host-b")


def task_body(steps: int) -> dict[str, Any]:
    return {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256", "num_inference_steps": steps}


@dataclass
class WorkerHost:
    host: hosts.Host
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    port: int
    api: Process
    workers: dict[str, WorkerHost]
    api_args: tuple[Path, dict[str, str]]
    database_url: str  # as the test process reaches it

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def submit(self, steps: int) -> str:
        answer = httpx.post(self.url("/v1/tasks"), json=task_body(steps), timeout=10)
        assert answer.status_code in (200, 201, 202), answer.text
        task_id: str = answer.json()["id"]
        return task_id

    def restart_api(self) -> None:
        assert self.api.stop(), self.api.output()
        data_dir, env = self.api_args
        self.api = start_api(data_dir, self.port, **env)

    def row(self, task_id: str) -> dict[str, Any]:
        """The task's row as the database holds it (the API does not show the worker id)."""
        return asyncio.run(_row(self.database_url, task_id))


async def _row(database_url: str, task_id: str) -> dict[str, Any]:
    import asyncpg  # type: ignore[import-untyped]

    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow("SELECT worker_id, attempts, status FROM tasks WHERE id = $1", task_id)
        return dict(row)
    finally:
        await connection.close()


def download_hosts(cluster: Cluster, task: dict[str, Any]) -> list[str]:
    """The hosts named by the task's result images, downloaded through the API's signed links."""
    found = []
    for result in task["results"]:
        answer = httpx.get(result["url"], timeout=10)
        assert answer.status_code == 200, answer.text
        with Image.open(io.BytesIO(answer.content)) as image:
            assert image.format == "PNG"
        found.append(host_of(answer.content))
    return found


def bucket_keys(endpoint: str, task_id: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET, Prefix="results/")
    return sorted(obj["Key"] for obj in listing.get("Contents", []) if f"/{task_id}/" in obj["Key"])


@pytest.fixture(scope="module")
def network() -> Iterator[hosts.Network]:
    reason = hosts.why_unavailable()
    if reason is not None:
        pytest.skip(f"no simulated hosts: {reason}")
    made = hosts.Network()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def s3_endpoint(network: hosts.Network) -> Iterator[str]:
    """A moto S3 server on the bridge's address, reached by the API and by every host."""
    with moto_server(network.gateway, BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    import os

    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"PostgreSQL only: set {POSTGRES_ENV}")
    url = asyncio.run(create_database(admin_url, "qis_test"))
    try:
        yield url
    finally:
        asyncio.run(drop_database(admin_url, url))


@pytest.fixture(scope="module")
def cluster(
    network: hosts.Network, s3_endpoint: str, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multi-host")
    forwarder = hosts.TcpForwarder((network.gateway, 0), ("127.0.0.1", 5432))
    shared = {
        **DUMMY_AWS,
        "QWEN_IMAGE_RESULTS_URL": f"s3://{BUCKET}/results",
        "QWEN_IMAGE_S3_ENDPOINT_URL": s3_endpoint,
        "QWEN_IMAGE_URL_SECRET": uuid.uuid4().hex,
        "QWEN_IMAGE_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    api_env = {**shared, "QWEN_IMAGE_DATABASE_URL": database}
    host_database = database.replace("@127.0.0.1/", f"@{network.gateway}:{forwarder.port}/")
    assert host_database != database, "the database URL names 127.0.0.1 without a port"
    port = free_port()
    api = start_api(root / "api", port, **api_env)
    workers: dict[str, WorkerHost] = {}
    try:
        for name in HOSTS:
            host = network.add_host(name)
            log = root / f"{name}.log"
            env = {**_environ(), **FAST_ENV, **shared, "QWEN_IMAGE_DATABASE_URL": host_database}
            command = host.command(worker_command(root / name, STEP_MS))
            with log.open("wb") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            workers[name] = WorkerHost(host, process, log)
        made = Cluster(port, api, workers, (root / "api", api_env), database)
        wait_ready(api, port)
        yield made
        api = made.api
    finally:
        for worker in workers.values():
            worker.process.kill()
            worker.process.wait(timeout=30)
        if api.alive:
            api.stop(signal.SIGKILL)
        forwarder.close()


def _environ() -> dict[str, str]:
    import os

    return {**os.environ, "QWEN_IMAGE_LEASE_SECONDS": str(LEASE_SECONDS)}


def test_tasks_run_on_both_hosts_and_results_come_through_the_api(cluster: Cluster) -> None:
    task_ids = [cluster.submit(steps=10) for _ in range(6)]
    done = [wait_for(cluster.port, task_id, "succeeded", "failed", timeout=60) for task_id in task_ids]
    assert [task["status"] for task in done] == ["succeeded"] * 6
    worker_ids = {cluster.row(task_id)["worker_id"] for task_id in task_ids}
    assert {worker_id.split("-")[0] + "-" + worker_id.split("-")[1] for worker_id in worker_ids} == set(HOSTS)
    made_by = {host for task in done for host in download_hosts(cluster, task)}
    assert made_by == set(HOSTS), "each host's images reach the client through the API"


def test_an_api_restart_while_workers_run_loses_no_task(cluster: Cluster) -> None:
    wait_ready(cluster.api, cluster.port)
    task_ids = [cluster.submit(steps=10) for _ in range(8)]
    wait_for(cluster.port, task_ids[0], "running")
    cluster.restart_api()
    wait_ready(cluster.api, cluster.port)
    done = [wait_for(cluster.port, task_id, "succeeded", "failed", timeout=60) for task_id in task_ids]
    assert [(task["status"], task["attempts"]) for task in done] == [("succeeded", 1)] * 8


def running_on(cluster: Cluster, steps: int) -> tuple[str, WorkerHost, str]:
    """A task of `steps` steps, once a few have run: its id, the host running it, the other host."""
    task_id = cluster.submit(steps=steps)
    deadline = time.monotonic() + 20
    while httpx.get(cluster.url(f"/v1/tasks/{task_id}"), timeout=10).json()["progress"]["step"] < 3:
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.05)
    first = cluster.row(task_id)["worker_id"]
    running = next(name for name in HOSTS if first.startswith(f"{name}-"))
    return task_id, cluster.workers[running], next(name for name in HOSTS if name != running)


def wait_for_log(worker: WorkerHost, *lines: str, timeout: float = 40) -> str:
    deadline = time.monotonic() + timeout
    while not any(line in worker.output() for line in lines):
        assert time.monotonic() < deadline, f"none of {lines} in the log:\n{worker.output()[-3000:]}"
        time.sleep(0.2)
    return next(line for line in lines if line in worker.output())


def test_a_partitioned_host_loses_its_task_to_the_other_host(cluster: Cluster, s3_endpoint: str) -> None:
    wait_ready(cluster.api, cluster.port)
    # 3 s of steps: the partitioned host ends its run while cut off, and comes back with its images.
    task_id, cut, other = running_on(cluster, steps=30)
    cut.host.unplug()
    try:
        done = wait_for(cluster.port, task_id, "succeeded", "failed", timeout=40)
        assert (done["status"], done["attempts"]) == ("succeeded", 2), "the cut run and the rerun"
        assert cluster.row(task_id)["worker_id"].startswith(f"{other}-")
        keys = bucket_keys(s3_endpoint, task_id)
        assert download_hosts(cluster, done) == [other]
        assert cut.process.poll() is None, f"the cut host's worker rides out the partition:\n{cut.output()[-2000:]}"
    finally:
        cut.host.plug_in()
    # Back on the network, the cut host's run learns it lost the lease; its completion is refused.
    late = wait_for_log(cut, "finished after its lease was lost", "stopped (lease_lost)")
    after = httpx.get(cluster.url(f"/v1/tasks/{task_id}"), timeout=10).json()
    assert (after["status"], after["attempts"], len(after["results"])) == ("succeeded", 2, 1)
    assert cluster.row(task_id)["worker_id"].startswith(f"{other}-")
    assert bucket_keys(s3_endpoint, task_id) == keys, "nothing duplicated in the bucket"
    assert download_hosts(cluster, after) == [other], f"the late run ({late!r}) replaced the rerun's image"
