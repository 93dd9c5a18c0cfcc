"""GET /metrics through the real app: the text parsed with prometheus_client's own parser, and the
values checked to move as the server works (a real task on the tiny pipeline, a canceled one, a 404,
a callback), its protection, and the multi-process mode (two processes write, one scrape reads both).

The recorded metrics live in the test process's registry, shared by every test: each test compares
the values after its work with those before."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qwen_image_server.engine import Engine
from qwen_image_server.metrics.shared_dir import ENVIRONMENT_VARIABLE
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.keys import Scope
from tests.api.conftest import FAST_SERVICE, TINY_TASK, wait_until
from tests.conftest import TINY_EVERYWHERE, asgi_client
from tests.unit.local_http import read_body, send_body, serving

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    answer = await client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_task_that_runs_moves_the_task_step_image_and_http_metrics(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    created = await client.post("/v1/tasks", json={**TINY_TASK, "num_inference_steps": 3})
    await wait_until(client, created.json()["id"], "succeeded")
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    model = {"model": "qwen-image"}
    assert grew("qwen_image_tasks_created_total", **model, dialect="native") == 1
    assert grew("qwen_image_tasks_finished_total", **model, dialect="native", outcome="succeeded", error="") == 1
    assert grew("qwen_image_images_total", **model) == 1
    assert grew("qwen_image_task_queue_wait_seconds_count", **model) == 1
    assert grew("qwen_image_task_run_seconds_count", **model, outcome="succeeded") == 1
    assert grew("qwen_image_task_run_seconds_sum", **model, outcome="succeeded") > 0
    assert grew("qwen_image_step_seconds_count", **model) == 2  # 3 steps: the first is not timed
    route = {"dialect": "native", "method": "POST", "route": "/v1/tasks"}
    assert grew("qwen_image_http_requests_total", **route, status=str(created.status_code)) == 1
    assert grew("qwen_image_http_request_seconds_count", **route) == 1
    # Read at the scrape from the database: nothing waits, the in-process worker is ready.
    assert value(after, "qwen_image_queue_depth", **model) == 0
    assert value(after, "qwen_image_queue_oldest_age_seconds", **model) == 0
    assert value(after, "qwen_image_workers_ready", **model) == 1
    assert value(after, "qwen_image_workers_live") == 1
    # The process runs the engine but has never used a GPU: no GPU memory series, and no error.
    assert not [name for name, _ in after if name.startswith("qwen_image_gpu_")]


async def test_queue_gauges_come_from_the_database(api: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await api.post("/v1/tasks", json=TINY_TASK)).status_code < 300
    samples = await scrape(api)
    assert value(samples, "qwen_image_queue_depth", model="qwen-image") == 2
    assert value(samples, "qwen_image_queue_oldest_age_seconds", model="qwen-image") > 0
    assert value(samples, "qwen_image_queue_depth", model="qwen-image-edit") == 0  # every served model has a series
    assert value(samples, "qwen_image_workers_ready", model="qwen-image") == 0  # no worker here
    assert value(samples, "qwen_image_tasks_running", model="qwen-image") == 0


async def test_a_repeated_idempotency_key_counts_one_task(api: httpx.AsyncClient) -> None:
    labels = {"model": "qwen-image", "dialect": "native"}
    before = value(await scrape(api), "qwen_image_tasks_created_total", **labels)
    ids = {(await api.post("/v1/tasks", json=TINY_TASK, headers={"Idempotency-Key": "k1"})).json()["id"] for _ in "ab"}
    assert len(ids) == 1
    assert value(await scrape(api), "qwen_image_tasks_created_total", **labels) == before + 1


async def test_a_queued_task_canceled_counts_as_canceled_once(api: httpx.AsyncClient) -> None:
    labels = {"model": "qwen-image", "dialect": "native", "outcome": "canceled", "error": ""}
    before = value(await scrape(api), "qwen_image_tasks_finished_total", **labels)
    task = (await api.post("/v1/tasks", json=TINY_TASK)).json()
    assert (await api.post(f"/v1/tasks/{task['id']}/cancel")).status_code == 200
    assert (await api.post(f"/v1/tasks/{task['id']}/cancel")).status_code == 409  # canceled already: not counted
    assert value(await scrape(api), "qwen_image_tasks_finished_total", **labels) == before + 1


async def test_a_404_is_counted_under_its_route_template_not_the_raw_path(api: httpx.AsyncClient) -> None:
    template = {"dialect": "native", "method": "GET", "route": "/v1/tasks/{task_id}", "status": "404"}
    before = value(await scrape(api), "qwen_image_http_requests_total", **template)
    assert (await api.get("/v1/tasks/no-such-task")).status_code == 404
    assert (await api.get("/no/route/here")).status_code == 404
    after = await scrape(api)
    assert value(after, "qwen_image_http_requests_total", **template) == before + 1
    unmatched = {"dialect": "none", "method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "qwen_image_http_requests_total", **unmatched) >= 1
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not [route for route in routes if "no-such-task" in route or "no/route" in route]


async def test_callback_attempts_are_counted_by_outcome(tmp_path: Path, engine: Engine) -> None:
    settings = Settings(
        **TINY_EVERYWHERE, **FAST_SERVICE, allowed_fetch_networks="127.0.0.0/8", data_dir=tmp_path / "data"
    )
    service = Service.build(settings, engine=engine, run_worker=True)
    receiver = {"/hook": lambda handler: (read_body(handler), send_body(handler, b"{}"))}
    async with service.running(), asgi_client(service) as client:
        before = await scrape(client)
        with serving(receiver) as base:
            task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": f"{base}/hook"})).json()
            await wait_until(client, task["id"], "succeeded")
            while not (await client.get(f"/v1/tasks/{task['id']}/callbacks")).json()["data"][0]["attempts"]:
                await asyncio.sleep(0.05)
        after = await scrape(client)
    for name, labels in (("qwen_image_callback_attempts_total", {"outcome": "delivered"}),
                         ("qwen_image_callbacks_finished_total", {"status": "delivered"})):  # fmt: skip
        assert value(after, name, **labels) == value(before, name, **labels) + 1


@pytest.fixture
async def keyed(tmp_path: Path, engine: Engine) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data")
    service = Service.build(settings, engine=engine, run_worker=False)
    async with service.running(), asgi_client(service) as client:
        yield service, client


async def test_metrics_need_an_admin_key_and_refusals_count_under_their_route(
    keyed: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = keyed
    user = (await service.keys.create("user"))[1]
    admin = (await service.keys.create("ops", (Scope.ADMIN,)))[1]
    assert (await client.get("/metrics")).status_code == 401
    refused = {"dialect": "native", "method": "POST", "route": "/v1/tasks", "status": "401"}
    before = value(await scrape(client, Authorization=f"Bearer {admin}"), "qwen_image_http_requests_total", **refused)
    assert (await client.post("/v1/tasks", json=TINY_TASK)).status_code == 401  # refused before the router
    after = await scrape(client, Authorization=f"Bearer {admin}")
    assert value(after, "qwen_image_http_requests_total", **refused) == before + 1
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {user}"})).status_code == 403
    await scrape(client, Authorization=f"Bearer {admin}")


async def test_metrics_public_and_metrics_off(tmp_path: Path, engine: Engine) -> None:
    for flags, status in (({"metrics_public": True}, 200), ({"metrics": False}, 404)):
        settings = Settings(**TINY_EVERYWHERE, **FAST_SERVICE, **flags, data_dir=tmp_path / str(status))
        service = Service.build(settings, engine=engine, run_worker=False)
        async with service.running(), asgi_client(service) as client:
            await service.keys.create("user")
            assert (await client.get("/metrics")).status_code == status


RECORD_IN_A_PROCESS = """
from qwen_image_server.metrics import recorded
recorded.task_created("qwen-image", "native")
recorded.callback_attempted("delivered", "delivered")
"""


async def test_two_processes_write_one_scrape_sees_both(
    api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi-process mode: each API process writes its values into the shared directory; a
    scrape of any process reads them all (here: two processes recorded, this one is scraped)."""
    # As `use_shared_dir` leaves it for the processes it starts (not called here: it would switch
    # this test process to the directory for the tests after this one; tests/unit covers it).
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(directory))
    source = str(Path(__file__).parents[2] / "src")
    environment: dict[str, Any] = {"PYTHONPATH": source, ENVIRONMENT_VARIABLE: str(directory)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", RECORD_IN_A_PROCESS], env=environment, check=True, timeout=60)
    samples = await scrape(api)
    assert value(samples, "qwen_image_tasks_created_total", model="qwen-image", dialect="native") == 2
    assert value(samples, "qwen_image_callback_attempts_total", outcome="delivered") == 2
    assert value(samples, "qwen_image_queue_depth", model="qwen-image") == 0  # still read at the scrape
