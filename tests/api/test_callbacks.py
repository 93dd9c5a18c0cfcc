"""Callbacks end to end: real tasks (tiny model), a real receiver on 127.0.0.1, Standard Webhooks
signatures checked with the `standardwebhooks` package, retries, refusals and the attempt log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service, server_webhook_secret
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import TaskError
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client
from tests.contracts.conftest import new_task
from tests.unit.local_http import read_body, send_body, serving

pytestmark = pytest.mark.anyio

FAST_RETRIES = {"callback_retry_seconds": (0.05, 0.05, 0.05), "callback_timeout_seconds": 5.0}


Answer = int | tuple[int, dict[str, str]]  # a status, or a status and headers to send with it


@dataclass
class Receiver:
    """Answers POSTs with the scripted answers (then 200), each after `delay` seconds, and keeps
    what it got and when (`time.monotonic()` when each request came and when its answer went)."""

    url: str
    statuses: list[Answer] = field(default_factory=list)
    delay: float = 0.0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        came = time.monotonic()
        body = read_body(handler)
        with self.lock:
            self.arrived.append(came)
            self.received.append(({k.lower(): v for k, v in handler.headers.items()}, body))
            answer = self.statuses.pop(0) if self.statuses else 200
        time.sleep(self.delay)
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        if headers:
            handler.send_response(status)
            for name, value in {**headers, "Content-Length": "2", "Connection": "close"}.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(b"{}")
        else:
            send_body(handler, b"{}", status=status, content_type="application/json")
        with self.lock:
            self.answered.append(time.monotonic())


@contextlib.contextmanager
def receiving(delay: float = 0.0) -> Iterator[Receiver]:
    box: list[Receiver] = []
    with serving({"/hook": lambda handler: box[0].handle(handler)}) as base:
        box.append(Receiver(f"{base}/hook", delay=delay))
        yield box[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as found:
        yield found


async def make_service(tmp_path: Path, engine: Engine, **settings: Any) -> Service:
    merged = {**FAST_SERVICE, **FAST_RETRIES, "allowed_fetch_networks": "127.0.0.0/8", **settings}
    return Service.build(
        Settings(**TINY_EVERYWHERE, **merged, data_dir=tmp_path / "data"), engine=engine, run_worker=True
    )


@pytest.fixture
async def hooked(tmp_path: Path, engine: Engine) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    service = await make_service(tmp_path, engine)
    async with service.running(), asgi_client(service) as client:
        yield service, client


async def settled_callback(
    client: httpx.AsyncClient, task_id: str, timeout: float = 60, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The task's callback once it is no longer pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = (await client.get(f"/v1/tasks/{task_id}/callbacks", headers=headers)).json()["data"]
        if found and found[0]["status"] != "pending":
            return dict(found[0])
        assert asyncio.get_running_loop().time() < deadline, f"callback still pending: {found}"
        await asyncio.sleep(0.05)


def verified(secret: str, headers: dict[str, str], body: bytes) -> Any:
    return Webhook(secret).verify(body, headers)


async def test_a_receiver_answering_500_500_200_gets_the_event_on_the_third_try_with_one_id(
    hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver
) -> None:
    service, client = hooked
    receiver.statuses = [500, 500]
    task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url})).json()
    callback = await settled_callback(client, task["id"])

    assert callback["status"] == "delivered"
    assert [(a["number"], a["status_code"], a["outcome"]) for a in callback["attempts"]] == [
        (1, 500, "failed"),
        (2, 500, "failed"),
        (3, 200, "delivered"),
    ]
    assert len(receiver.received) == 3
    assert {headers["webhook-id"] for headers, _ in receiver.received} == {callback["id"]}
    secret = server_webhook_secret(service.settings)
    for headers, body in receiver.received:
        event = verified(secret, headers, body)
        assert event["type"] == "task.succeeded"
        assert event["data"]["id"] == task["id"]
    image_url = httpx.URL(event["data"]["results"][0]["url"])
    assert str(image_url).startswith("http://127.0.0.1:8000/v1/results/")  # no public_url: the server's address
    download = await client.get(image_url.raw_path.decode())
    assert download.status_code == 200 and download.content[:4] == b"\x89PNG"


async def test_a_tampered_body_or_another_secret_fails_verification(
    hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver
) -> None:
    service, client = hooked
    task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url})).json()
    await settled_callback(client, task["id"])
    [(headers, body)] = receiver.received
    secret = server_webhook_secret(service.settings)
    verified(secret, headers, body)
    with pytest.raises(WebhookVerificationError):
        verified(secret, headers, body.replace(b"succeeded", b"failed"))
    with pytest.raises(WebhookVerificationError):
        verified("whsec_" + "A" * 32, headers, body)


async def test_a_receiver_that_never_accepts_ends_failed_after_the_schedule(
    hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver
) -> None:
    _, client = hooked
    receiver.statuses = [503] * 10
    task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url})).json()
    callback = await settled_callback(client, task["id"])
    assert callback["status"] == "failed"
    assert len(callback["attempts"]) == len(FAST_RETRIES["callback_retry_seconds"]) + 1
    assert callback["attempts"][-1]["error"] == "the receiver answered HTTP 503"


async def test_a_canceled_task_calls_back_too(hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver) -> None:
    service, client = hooked
    assert service.worker is not None
    service.worker.stop()  # no worker: the task stays queued until it is canceled
    task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url})).json()
    await client.post(f"/v1/tasks/{task['id']}/cancel")
    callback = await settled_callback(client, task["id"])
    assert callback["status"] == "delivered"
    event = json.loads(receiver.received[0][1])
    assert (event["type"], event["data"]["status"]) == ("task.canceled", "canceled")


async def test_private_callback_urls_are_recorded_as_refused(
    tmp_path: Path, engine: Engine, receiver: Receiver
) -> None:
    service = await make_service(tmp_path, engine, allowed_fetch_networks="")
    async with service.running(), asgi_client(service) as client:
        task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url})).json()
        callback = await settled_callback(client, task["id"])
    assert callback["status"] == "refused"
    [attempt] = callback["attempts"]  # never retried
    assert attempt["status_code"] is None and "loopback" in attempt["error"]
    assert receiver.received == []


async def test_a_redirecting_receiver_is_refused_and_not_followed(
    hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver
) -> None:
    _, client = hooked
    receiver.statuses = [307]
    task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url})).json()
    callback = await settled_callback(client, task["id"])
    assert callback["status"] == "refused"
    assert "do not follow redirects" in callback["attempts"][0]["error"]
    assert len(receiver.received) == 1


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "not a url", "http:///path-only"])
async def test_a_callback_url_that_is_not_http_is_refused_at_creation(
    hooked: tuple[Service, httpx.AsyncClient], url: str
) -> None:
    _, client = hooked
    answer = await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": url})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "url_not_allowed"
    assert (await client.get("/v1/tasks")).json()["data"] == []  # nothing was queued


async def test_a_keys_tasks_are_signed_with_that_keys_secret(
    hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver
) -> None:
    service, client = hooked
    key, token = await service.keys.create("hooks")
    auth = {"Authorization": f"Bearer {token}"}
    task = (await client.post("/v1/tasks", json={**TINY_TASK, "callback_url": receiver.url}, headers=auth)).json()
    await settled_callback_with(client, task["id"], auth)
    [(headers, body)] = receiver.received
    verified(await service.keys.webhook_secret(key.id), headers, body)
    with pytest.raises(WebhookVerificationError):
        verified(server_webhook_secret(service.settings), headers, body)
    other = (await service.keys.create("other"))[1]
    hidden = await client.get(f"/v1/tasks/{task['id']}/callbacks", headers={"Authorization": f"Bearer {other}"})
    assert hidden.status_code == 404


async def settled_callback_with(client: httpx.AsyncClient, task_id: str, headers: dict[str, str]) -> None:
    for _ in range(1200):
        found = (await client.get(f"/v1/tasks/{task_id}/callbacks", headers=headers)).json()["data"]
        if found and found[0]["status"] != "pending":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("callback still pending")


async def test_novita_and_kie_callbacks_have_their_providers_shapes(
    hooked: tuple[Service, httpx.AsyncClient], receiver: Receiver
) -> None:
    service, client = hooked
    prompt = {"prompt": "a red fox in snow", "seed": 7}
    novita = await client.post(
        "/v3/async/qwen-image-txt2img",
        json={**prompt, "size": "256*256", "steps": 2, "extra": {"webhook": {"url": receiver.url}}},
    )
    kie = await client.post(
        "/api/v1/jobs/createTask",
        json={
            "model": "qwen/text-to-image",
            "callBackUrl": receiver.url,
            "input": {**prompt, "image_size": "square", "num_inference_steps": 2},
        },
    )
    novita_id, kie_id = novita.json()["task_id"], kie.json()["data"]["taskId"]
    await settled_callback(client, novita_id, timeout=120)
    await settled_callback(client, kie_id, timeout=120)
    bodies = {
        json.loads(body).get("event_type", "kie"): (headers, json.loads(body)) for headers, body in receiver.received
    }
    assert bodies["ASYNC_TASK_RESULT"][1]["payload"]["task"]["task_id"] == novita_id
    assert bodies["ASYNC_TASK_RESULT"][1]["payload"]["task"]["status"] == "TASK_STATUS_SUCCEED"
    kie_headers, kie_body = bodies["kie"]
    assert (kie_body["code"], kie_body["data"]["taskId"], kie_body["data"]["state"]) == (200, kie_id, "success")
    assert kie_headers["x-webhook-signature"] and kie_headers["x-webhook-timestamp"] == kie_headers["webhook-timestamp"]
    secret = server_webhook_secret(service.settings)
    for headers, _ in receiver.received:
        assert headers["webhook-signature"].startswith("v1,")
    for headers, body in receiver.received:
        verified(secret, headers, body)


# -- fairness, 410 Gone, Retry-After, the schedule's gaps ------------------------------------------
# These make tasks end through the store (no worker, no engine): many callbacks at once, cheaply.


@contextlib.asynccontextmanager
async def bare_service(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    merged = {**FAST_SERVICE, **FAST_RETRIES, "allowed_fetch_networks": "127.0.0.0/8", **settings}
    service = Service.build(Settings(**TINY_EVERYWHERE, **merged, data_dir=tmp_path / "data"), run_worker=False)
    async with service.running(), asgi_client(service) as client:
        yield service, client


async def ended_task(service: Service, callback_url: str, owner: str | None = None) -> str:
    """A task that has just failed, with `callback_url`: its callback is due now."""
    new = replace(new_task(), callback_url=callback_url, owner=owner)
    await service.store.create(new)
    claimed = await service.store.claim("test-worker", [new.request.model], lease_seconds=60)
    assert claimed is not None and claimed.id == new.id
    await service.store.fail(new.id, "test-worker", TaskError("generation_failed", "made to fail by the test"))
    return new.id


async def test_a_slow_receiver_with_many_callbacks_does_not_delay_another_receiver(tmp_path: Path) -> None:
    settings = {"callback_concurrency": 8, "callback_destination_concurrency": 2, "callback_timeout_seconds": 10.0}
    with receiving(delay=3.0) as slow, receiving() as fast:
        async with bare_service(tmp_path, **settings) as (service, client):
            for _ in range(20):
                await ended_task(service, slow.url)
            await asyncio.sleep(0.3)  # the slow receiver's callbacks are under way
            ended = time.monotonic()
            task_id = await ended_task(service, fast.url)
            assert (await settled_callback(client, task_id))["status"] == "delivered"
            assert fast.arrived[0] - ended < 1.0, "the fast receiver waited for the slow one"
            assert len(slow.received) == 2  # at most 2 at a time to one destination: the first 2 only, so far


async def test_a_tenant_with_many_slow_receivers_does_not_take_every_slot(tmp_path: Path) -> None:
    """Host names cost nothing: slow receivers on six destinations of one API key get that key's
    slots only (2 here), and another key's callback goes out at once."""
    settings = {"callback_concurrency": 4, "callback_owner_concurrency": 2, "callback_timeout_seconds": 10.0}
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(receiving(delay=3.0)) for _ in range(6)]  # six ports: six destinations
        fast = stack.enter_context(receiving())
        async with bare_service(tmp_path, **settings) as (service, client):
            (mallory, _), (alice, token) = await service.keys.create("mallory"), await service.keys.create("alice")
            for receiver in slow:
                await ended_task(service, receiver.url, owner=mallory.id)
            await asyncio.sleep(0.3)  # mallory's callbacks are under way
            ended = time.monotonic()
            task_id = await ended_task(service, fast.url, owner=alice.id)
            as_alice = {"Authorization": f"Bearer {token}"}
            assert (await settled_callback(client, task_id, headers=as_alice))["status"] == "delivered"
            assert fast.arrived[0] - ended < 1.0, "alice's receiver waited for mallory's"
            assert sum(len(receiver.received) for receiver in slow) == 2, "mallory had 2 slots, not 4"


async def test_a_410_gone_disables_the_url_for_this_and_later_callbacks(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [410]
    async with bare_service(tmp_path) as (service, client):
        gone = await settled_callback(client, await ended_task(service, receiver.url))
        later = await settled_callback(client, await ended_task(service, receiver.url))
        other_url = await settled_callback(client, await ended_task(service, receiver.url + "?v=2"))
    assert gone["status"] == "failed"
    [attempt] = gone["attempts"]  # not retried
    assert attempt["status_code"] == 410 and "disabled" in attempt["error"]
    assert later["status"] == "refused"
    [refusal] = later["attempts"]
    assert refusal["status_code"] is None
    assert "disabled" in refusal["error"] and "410 Gone" in refusal["error"] and gone["id"] in refusal["error"]
    assert other_url["status"] == "delivered"  # per exact URL: a new one is called
    assert len(receiver.received) == 2


def _in_seconds(seconds: float) -> str:
    return formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "at_least"),
    [(429, lambda: "2", 1.9), (503, lambda: _in_seconds(3), 1.9)],  # a date has whole seconds: 2 to 3 s
    ids=["429-seconds", "503-http-date"],
)
async def test_retry_after_on_429_and_503_is_honoured(
    tmp_path: Path, receiver: Receiver, status: int, retry_after: Any, at_least: float
) -> None:
    async with bare_service(tmp_path) as (service, client):
        task_id = await ended_task(service, receiver.url)
        receiver.statuses = [(status, {"Retry-After": retry_after()})]
        callback = await settled_callback(client, task_id)
    assert callback["status"] == "delivered"
    assert [a["status_code"] for a in callback["attempts"]] == [status, 200]
    assert "Retry-After" in callback["attempts"][0]["error"]
    gap = receiver.arrived[1] - receiver.answered[0]
    assert at_least <= gap < at_least + 1.6  # the schedule alone says 0.05 s


async def test_a_503_without_retry_after_keeps_the_schedule(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [503]
    async with bare_service(tmp_path) as (service, client):
        await settled_callback(client, await ended_task(service, receiver.url))
    assert receiver.arrived[1] - receiver.answered[0] < 0.5


async def test_retries_keep_the_schedules_gaps_after_each_attempt_ends_whatever_else_is_slow(tmp_path: Path) -> None:
    settings = {"callback_retry_seconds": (1.0, 1.0), "callback_timeout_seconds": 10.0}
    with receiving(delay=4.0) as slow, receiving(delay=0.5) as flaky:
        flaky.statuses = [500, 500]
        async with bare_service(tmp_path, **settings) as (service, client):
            for _ in range(3):
                await ended_task(service, slow.url)  # in flight during the flaky receiver's retries
            callback = await settled_callback(client, await ended_task(service, flaky.url))
    assert [a["status_code"] for a in callback["attempts"]] == [500, 500, 200]
    gaps = [flaky.arrived[n + 1] - flaky.answered[n] for n in range(2)]
    assert all(0.95 <= gap < 1.3 for gap in gaps), gaps
