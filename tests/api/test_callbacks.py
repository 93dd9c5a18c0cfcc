"""Callbacks end to end: real tasks (tiny model), a real receiver on 127.0.0.1, Standard Webhooks
signatures checked with the `standardwebhooks` package, retries, refusals and the attempt log."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service, server_webhook_secret
from qwen_image_server.settings import Settings
from tests.api.conftest import FAST_SERVICE, TINY_TASK
from tests.conftest import TINY_EVERYWHERE, asgi_client
from tests.unit.local_http import read_body, send_body, serving

pytestmark = pytest.mark.anyio

FAST_RETRIES = {"callback_retry_seconds": (0.05, 0.05, 0.05), "callback_timeout_seconds": 5.0}


@dataclass
class Receiver:
    """Answers POSTs with the scripted statuses (then 200) and keeps what it got."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        with self.lock:
            self.received.append(({k.lower(): v for k, v in handler.headers.items()}, body))
            status = self.statuses.pop(0) if self.statuses else 200
        send_body(handler, b"{}", status=status, content_type="application/json")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []
    with serving({"/hook": lambda handler: box[0].handle(handler)}) as base:
        box.append(Receiver(f"{base}/hook"))
        yield box[0]


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


async def settled_callback(client: httpx.AsyncClient, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """The task's callback once it is no longer pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = (await client.get(f"/v1/tasks/{task_id}/callbacks")).json()["data"]
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
