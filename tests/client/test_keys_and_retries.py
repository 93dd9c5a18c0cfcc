"""API keys from the argument or $QWEN_IMAGE_API_KEY, the base URL from $QWEN_IMAGE_URL, and retries:
a real 429 from the server's request rate limit is waited out as its Retry-After says."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from qwen_image_server.cli import app
from qwen_image_server.client import AuthenticationError, Client, ConnectionFailed, Overloaded
from qwen_image_server.engine import Engine
from tests.client.conftest import FAST, serving
from tests.conftest import LiveServer


@pytest.fixture(scope="module")
def keyed(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """A server with one API key (made with the CLI, as an operator would): every call needs it."""
    data_dir = tmp_path_factory.mktemp("keyed") / "data"
    created = CliRunner().invoke(app, ["keys", "create", "--name", "client", "--data-dir", str(data_dir)])
    assert created.exit_code == 0, created.stderr
    with serving(engine, data_dir) as server:
        yield server, created.stdout.strip()


def test_the_key_and_url_come_from_the_environment(
    keyed: tuple[LiveServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, key = keyed
    monkeypatch.setenv("QWEN_IMAGE_URL", server.url)
    monkeypatch.setenv("QWEN_IMAGE_API_KEY", key)
    with Client() as client:
        assert client.base_url == server.url
        assert client.generate("a fox", seed=2, **FAST).seeds == [2]


def test_a_missing_or_wrong_key_is_an_authentication_error(
    keyed: tuple[LiveServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, key = keyed
    monkeypatch.delenv("QWEN_IMAGE_API_KEY", raising=False)
    for wrong in (None, key[:-2] + "xx"):
        with Client(server.url, api_key=wrong) as client, pytest.raises(AuthenticationError) as refused:
            client.submit("a fox", **FAST)
        assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")


@pytest.fixture(scope="module")
def limited(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server allowing 60 requests a minute per caller: a burst of 60, then one a second."""
    with serving(engine, tmp_path_factory.mktemp("limited") / "data", requests_per_minute=60) as server:
        yield server


def spend_the_burst(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as raw:
        for _ in range(61):
            if raw.get("/v1/tasks").status_code == 429:
                return
    raise AssertionError("the rate limit never answered 429")


def test_a_429_is_retried_after_its_retry_after(limited: LiveServer) -> None:
    with Client(limited.url, max_retries=0) as impatient:
        spend_the_burst(limited)
        with pytest.raises(Overloaded) as refused:
            impatient.submit("a fox", **FAST)
    error = refused.value
    assert (error.status, error.code) == (429, "rate_limited") and error.retry_after is not None
    assert 0 < error.retry_after <= 2

    with Client(limited.url, max_retries=3) as patient:
        spend_the_burst(limited)
        started = time.monotonic()
        task = patient.submit("a fox", **FAST)  # refused once, then made after Retry-After
        assert time.monotonic() - started >= 0.5
        assert patient.wait(task.id, timeout=60).status == "succeeded"


def test_no_server_is_a_connection_error_after_the_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    with Client(f"http://127.0.0.1:{port}", max_retries=1) as client, pytest.raises(ConnectionFailed) as failed:
        client.get("task_x")
    assert failed.value.status is None and failed.value.code == "connection_failed"
