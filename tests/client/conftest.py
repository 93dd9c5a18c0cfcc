"""Live servers for the client's tests: uvicorn on a loopback port in a thread, the real service
with the tiny model (tests/conftest.py's LiveServer), settings chosen per test module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qwen_image_server.domain import ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE, LiveServer

# Small and quick: the tiny model at its smallest size, two steps.
FAST: dict[str, Any] = {"size": "256x256", "steps": 2}


@contextmanager
def serving(engine: Engine, data_dir: Path, **settings: Any) -> Iterator[LiveServer]:
    """A live server on `data_dir` with the fast service settings of tests/api plus `settings`."""
    chosen = Settings(
        **TINY_EVERYWHERE,
        models=tuple(ModelName),
        data_dir=data_dir,
        lease_seconds=5.0,
        progress_interval_seconds=0.05,
        poll_interval_seconds=0.05,
        drain_seconds=1.0,
        **settings,
    )
    with LiveServer(chosen, engine) as server:
        yield server
