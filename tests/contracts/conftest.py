"""The task store contract: every store implementation runs tests/contracts/test_task_store.py.

A backend gives a fresh, empty database URL for one test and cleans it up afterwards. SQLite always
runs. PostgreSQL runs when QWEN_IMAGE_TEST_POSTGRES_URL names a server where we may create databases
(e.g. `postgresql+asyncpg://postgres@127.0.0.1/postgres`, with the asyncpg driver installed): each
test gets its own database, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bench.common import throwaway_database

from qwen_image_server.domain import MODEL_SPECS, GenerationRequest, ModelName
from qwen_image_server.tasks.model import NewTask
from qwen_image_server.tasks.sql import SqlTaskStore
from tests.conftest import picture_bytes

POSTGRES_ENV = "QWEN_IMAGE_TEST_POSTGRES_URL"

Backend = Callable[[Path], AbstractAsyncContextManager[str]]


@asynccontextmanager
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[str]:
    # A folder that does not exist yet: the store creates it.
    yield f"sqlite+aiosqlite:///{tmp_path / 'db' / 'tasks.db'}"


@asynccontextmanager
async def postgres_backend(tmp_path: Path) -> AsyncIterator[str]:
    async with throwaway_database(os.environ[POSTGRES_ENV], prefix="qis_test") as url:
        yield url


BACKENDS: dict[str, Backend] = {"sqlite": sqlite_backend}
if os.environ.get(POSTGRES_ENV):
    BACKENDS["postgresql"] = postgres_backend


class FakeClock:
    """A clock that moves 1 ms per reading (so creation order is strict and predictable) and jumps
    on `advance`; `tick=timedelta(0)` freezes it."""

    def __init__(self, tick: timedelta = timedelta(milliseconds=1)) -> None:
        self.time = datetime.now(UTC).replace(microsecond=0)
        self.tick = tick

    def __call__(self) -> datetime:
        self.time += self.tick
        return self.time

    def advance(self, seconds: float) -> datetime:
        self.time += timedelta(seconds=seconds)
        return self.time


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=sorted(BACKENDS))
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with BACKENDS[request.param](tmp_path) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[SqlTaskStore]:
    task_store = SqlTaskStore.open(database_url, clock=clock)
    await task_store.start()
    try:
        yield task_store
    finally:
        await task_store.close()


@pytest.fixture
async def other_store(store: SqlTaskStore, database_url: str, clock: FakeClock) -> AsyncIterator[SqlTaskStore]:
    """A second store on the same database, as a second process would have (after `store` migrated it)."""
    task_store = SqlTaskStore.open(database_url, clock=clock)
    await task_store.start()
    try:
        yield task_store
    finally:
        await task_store.close()


def make_request(
    model: ModelName = ModelName.QWEN_IMAGE, prompt: str = "a red fox", **fields: object
) -> GenerationRequest:
    if MODEL_SPECS[model].is_edit:
        fields.setdefault("images", (picture_bytes(),))
    return GenerationRequest.create(
        model=model, prompt=prompt, width=256, height=256, num_inference_steps=2, seed=1, **fields
    )


def new_task(
    model: ModelName = ModelName.QWEN_IMAGE,
    *,
    priority: int = 0,
    owner: str | None = None,
    max_attempts: int = 3,
    task_id: str | None = None,
    request: GenerationRequest | None = None,
) -> NewTask:
    request = request or make_request(model)
    new = NewTask(request=request, priority=priority, owner=owner, max_attempts=max_attempts)
    return new if task_id is None else replace(new, id=task_id)
