"""Shared fixtures. The engine fixtures run the real diffusers pipelines with the tiny model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.settings import Settings

TINY_EVERYWHERE = {f"checkpoint_{name.value.replace('-', '_')}": "tiny" for name in ModelName}


def picture_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB", fmt: str = "PNG"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_settings() -> Settings:
    return Settings(**TINY_EVERYWHERE)


@pytest.fixture(scope="session")
def engine(tiny_settings: Settings) -> Engine:
    """One engine with the tiny model for every test that only generates (loading is the slow part)."""
    return Engine(tiny_settings)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwen_image_server.engine.tiny import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(folder)
    return folder


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No QWEN_IMAGE_* variables from the developer's shell leak into a test."""
    import os

    for key in list(os.environ):
        if key.startswith("QWEN_IMAGE_"):
            monkeypatch.delenv(key)
    yield


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
