"""API keys: required once one exists, checked in each dialect's header, tasks private to their key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from qwen_image_server.cli import app
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import Scope
from tests.api.conftest import TINY_TASK

pytestmark = pytest.mark.anyio


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_without_keys_the_server_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/tasks", json=TINY_TASK)).status_code == 202


async def test_once_a_key_exists_every_call_needs_a_valid_one(client: httpx.AsyncClient, service: Service) -> None:
    _, token = await service.keys.create("alice")
    missing = await client.post("/v1/tasks", json=TINY_TASK)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = await client.post("/v1/tasks", json=TINY_TASK, headers=bearer(token[:-2] + "xx"))
    assert wrong.status_code == 401
    assert (await client.post("/v1/tasks", json=TINY_TASK, headers=bearer(token))).status_code == 202
    assert (await client.get("/healthz")).status_code == 200, "health stays open"


async def test_a_key_sees_only_its_own_tasks_and_admin_sees_all(client: httpx.AsyncClient, service: Service) -> None:
    _, alice = await service.keys.create("alice")
    _, bob = await service.keys.create("bob")
    _, root = await service.keys.create("ops", (Scope.ADMIN,))
    task = (await client.post("/v1/tasks", json=TINY_TASK, headers=bearer(alice))).json()
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=bearer(alice))).status_code == 200
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=bearer(bob))).status_code == 404
    assert (await client.post(f"/v1/tasks/{task['id']}/cancel", headers=bearer(bob))).status_code == 404
    assert (await client.get("/v1/tasks", headers=bearer(bob))).json()["data"] == []
    assert [t["id"] for t in (await client.get("/v1/tasks", headers=bearer(root))).json()["data"]] == [task["id"]]
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=bearer(root))).status_code == 200


async def test_a_revoked_key_fails_at_once(client: httpx.AsyncClient, service: Service) -> None:
    key, token = await service.keys.create("temp")
    await service.keys.create("other")  # keys stay required after the revoke
    assert (await client.get("/v1/tasks", headers=bearer(token))).status_code == 200
    await service.keys.revoke(key.id)
    assert (await client.get("/v1/tasks", headers=bearer(token))).status_code == 401


async def test_revoking_the_last_key_does_not_open_the_server(client: httpx.AsyncClient, service: Service) -> None:
    key, token = await service.keys.create("only")
    await service.keys.revoke(key.id)
    for headers in ({}, bearer(token)):
        refused = await client.post("/v1/tasks", json=TINY_TASK, headers=headers)
        assert refused.status_code == 401, "a server that had keys stays closed when they are all revoked"
    _, fresh = await service.keys.create("next")
    assert (await client.post("/v1/tasks", json=TINY_TASK, headers=bearer(fresh))).status_code == 202


async def test_scopes_are_enforced(client: httpx.AsyncClient, service: Service) -> None:
    _, reader = await service.keys.create("dashboard", (Scope.READ,))
    refused = await client.post("/v1/tasks", json=TINY_TASK, headers=bearer(reader))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert (await client.get("/v1/tasks", headers=bearer(reader))).status_code == 200


async def test_only_hashes_are_stored(client: httpx.AsyncClient, service: Service) -> None:
    key, token = await service.keys.create("alice")
    secret = token.split("_", 2)[2]  # the secret itself may hold "_" (urlsafe base64)
    assert len(secret) == 43
    database = service.settings.data_dir / "tasks.db"
    with sqlite3.connect(database) as connection:
        rows = connection.execute("select * from api_keys").fetchall()
    assert len(rows) == 1 and key.id in rows[0]
    assert all(secret not in str(value) for value in rows[0])


DIALECT_CALLS = {
    "openai": ("/v1/images/generations", {"prompt": "fox", "size": "256x256"}, {}, 401),
    "dashscope": (
        "/api/v1/services/aigc/multimodal-generation/generation",
        {"model": "qwen-image", "input": {"messages": [{"role": "user", "content": [{"text": "fox"}]}]}},
        {},
        401,
    ),
    "pixazo": (
        "/qwen-image/v1/generateMultimodeTextToImageRequest",
        {"model": "qwen-image", "input": {"messages": [{"role": "user", "content": [{"text": "fox"}]}]}},
        {},
        401,
    ),
    "novita": ("/v3/async/qwen-image-txt2img", {"prompt": "fox", "size": "256*256"}, {}, 401),
    "kie": ("/api/v1/jobs/createTask", {"model": "qwen/text-to-image", "input": {"prompt": "fox"}}, {}, 200),
    "pixwith": ("/api/task/create", {"prompt": "fox", "model_id": "0-24"}, {}, 401),
}


@pytest.mark.parametrize("dialect", list(DIALECT_CALLS))
async def test_every_dialect_refuses_a_missing_key_in_its_own_shape(
    client: httpx.AsyncClient, service: Service, dialect: str
) -> None:
    await service.keys.create("alice")
    path, body, headers, status = DIALECT_CALLS[dialect]
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == status
    text = response.text
    assert "API key" in text
    if dialect == "kie":
        assert response.json()["code"] == 401  # kie answers HTTP 200 with the code in the envelope
    assert (await client.get("/v1/tasks", headers={})).status_code == 401


def test_keys_commands_create_list_and_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "ci", "--data-dir", str(tmp_path)])
    assert created.exit_code == 0 and created.stdout.startswith("qik_")
    listing = runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path)])
    key_id = listing.stdout.split()[0]
    assert "ci" in listing.stdout and "active" in listing.stdout
    revoked = runner.invoke(app, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)])
    assert revoked.exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path)]).stdout
    missing = runner.invoke(app, ["keys", "revoke", "nope", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no key" in missing.stderr


def test_keys_webhook_secret_prints_a_stable_secret_per_key_and_for_the_server(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(app, ["keys", "create", "--name", "hooks", *data])
    key_id = created.stdout.split("_")[1]
    assert f"keys webhook-secret {key_id}" in created.stderr
    per_key = runner.invoke(app, ["keys", "webhook-secret", key_id, *data]).stdout.strip()
    server = runner.invoke(app, ["keys", "webhook-secret", *data]).stdout.strip()
    assert per_key.startswith("whsec_") and server.startswith("whsec_") and per_key != server
    assert runner.invoke(app, ["keys", "webhook-secret", key_id, *data]).stdout.strip() == per_key
    assert runner.invoke(app, ["keys", "webhook-secret", *data]).stdout.strip() == server
    missing = runner.invoke(app, ["keys", "webhook-secret", "nope", *data])
    assert missing.exit_code == 2 and "no key" in missing.stderr


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model", "tiny", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


async def test_an_open_server_accepts_any_key_header(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/tasks", json=TINY_TASK, headers=bearer("sk-whatever"))).status_code == 202


async def test_a_key_made_before_callbacks_gets_a_webhook_secret_on_first_use(service: Service) -> None:
    key, _token = await service.keys.create("old")
    async with service.database.write() as conn:  # as migration 0005 leaves the keys that existed
        await conn.exec_driver_sql("UPDATE api_keys SET webhook_secret = NULL")
    first = await service.keys.webhook_secret(key.id)
    assert first.startswith("whsec_")
    assert await service.keys.webhook_secret(key.id) == first
