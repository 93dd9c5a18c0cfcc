"""Shared fixtures. The engine fixtures run the real diffusers pipelines with the tiny model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from qwen_image_server.api.app import create_app
from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings

TINY_EVERYWHERE = {f"checkpoint_{name.value.replace('-', '_')}": "tiny" for name in ModelName}
# For tests that compare the pixels of different requests: the invisible watermark is a hash of each
# image's recipe, so two recipes' marks differ by a few levels (provenance/finishing.py).
UNMARKED = {**TINY_EVERYWHERE, "invisible_watermark": False}


def picture_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB", fmt: str = "PNG"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def asgi_client(service: Service, **options: Any) -> httpx.AsyncClient:
    """A client of `service`'s app, in-process over ASGI (the test starts and stops the service)."""
    transport = httpx.ASGITransport(app=create_app(service, manage_service=False))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **{"timeout": 60, **options})


@pytest.fixture(scope="session")
def tiny_settings() -> Settings:
    return Settings(**TINY_EVERYWHERE)


@pytest.fixture(scope="session")
def engine(tiny_settings: Settings) -> Engine:
    """One engine with the tiny model for every test that only generates (loading is the slow part)."""
    return Engine(tiny_settings)


@pytest.fixture(scope="session")
def unmarked_engine() -> Engine:
    """The tiny engine without the invisible watermark, to compare the pixels of different requests."""
    return Engine(Settings(**UNMARKED))


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


class LiveServer:
    """The whole app served by uvicorn on a free loopback port, in a thread of this process, with
    a real service (SQLite, local results, a worker running the tiny model)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        import socket

        import uvicorn

        from qwen_image_server.api.app import create_app
        from qwen_image_server.service import Service

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = Service.build(settings, engine=engine, run_worker=True)
        config = uvicorn.Config(create_app(self.service), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

    def __enter__(self) -> LiveServer:
        import threading
        import time

        import httpx

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the live server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live_server(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A running server for client libraries and provider SDKs (module-scoped: one per test file)."""
    from qwen_image_server.domain import ModelName as Models

    settings = Settings(
        **TINY_EVERYWHERE,
        models=tuple(Models),
        data_dir=tmp_path_factory.mktemp("live") / "data",
        lease_seconds=5.0,
        progress_interval_seconds=0.05,
        poll_interval_seconds=0.05,
        drain_seconds=1.0,
        allowed_fetch_networks="127.0.0.0/8",  # input images are served by the tests on loopback
    )
    with LiveServer(settings, engine) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _data_dir_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Engines made without a `data_dir` (the default `./data`) keep their C2PA pair and adapter cache
    in a temporary folder, not in the checkout."""
    import os

    previous = os.environ.get("QWEN_IMAGE_DATA_DIR")
    os.environ["QWEN_IMAGE_DATA_DIR"] = str(tmp_path_factory.mktemp("default-data"))
    yield
    if previous is None:
        os.environ.pop("QWEN_IMAGE_DATA_DIR", None)
    else:
        os.environ["QWEN_IMAGE_DATA_DIR"] = previous


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LoRA for the tiny transformer (engine/tiny_lora.py)."""
    from qwen_image_server.engine.tiny_lora import save_tiny_lora

    return save_tiny_lora(tmp_path_factory.mktemp("api-loras") / "style.safetensors", seed=4)


@pytest.fixture(scope="module")
def files(lora_file: Path) -> Iterator[str]:
    """Adapter URLs on loopback: `/style.safetensors` (`lora_file`) and `/style.bin` (a pickle)."""
    import pickle

    from tests.unit.local_http import send_body, serving

    routes = {
        "/style.safetensors": lambda handler: send_body(handler, lora_file.read_bytes()),
        "/style.bin": lambda handler: send_body(handler, pickle.dumps({"not": "weights"})),
    }
    with serving(routes) as base:
        yield base
