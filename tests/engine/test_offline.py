"""Nothing reaches the network when the checkpoint is `tiny` or a local folder."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE, picture_bytes


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise NetworkUsed(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], attempts


def _run_all_models(engine: Engine) -> None:
    for model in ModelName:
        images = () if model is ModelName.QWEN_IMAGE else (picture_bytes((96, 96)),)
        request = GenerationRequest.create(
            model=model, prompt="a fox", width=256, height=256, num_inference_steps=2, seed=1, images=images
        )
        assert engine.generate(request)


def test_the_tiny_model_runs_without_network(no_network: list[str]) -> None:
    _run_all_models(Engine(Settings(**TINY_EVERYWHERE)))


def test_a_local_folder_loads_and_runs_without_network(no_network: list[str], tiny_dir: Path) -> None:
    folder = {key: str(tiny_dir) for key in TINY_EVERYWHERE}
    _run_all_models(Engine(Settings(**folder)))


def test_the_guard_itself_catches_network_use(no_network: list[str]) -> None:
    with pytest.raises(NetworkUsed):
        socket.create_connection(("example.com", 80))
    no_network.clear()
