"""The ResultStore contract (results/store.py), run against every store: local files and S3 (a real
moto server over HTTP). Tests of one store's own workings stay with it (tests/unit/test_results.py,
tests/results/test_s3_store.py)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from qwen_image_server.domain import ImageResult, OutputFormat
from qwen_image_server.results import ResultNotFound, is_valid_key
from qwen_image_server.tasks.model import new_task_id
from tests.conftest import picture_bytes
from tests.results.conftest import StoreUnderTest

pytestmark = pytest.mark.anyio


def image(index: int = 0, fmt: OutputFormat = OutputFormat.PNG, data: bytes | None = None) -> ImageResult:
    data = picture_bytes(color=(10 * index, 20, 30)) if data is None else data
    return ImageResult(data=data, output_format=fmt, width=64, height=48, seed=1234 + index, index=index)


async def test_put_then_read_round_trip(under_test: StoreUnderTest) -> None:
    task_id = new_task_id()
    result = image(index=1)
    stored = await under_test.store.put(task_id, result)

    assert stored.key == f"{task_id}/1.png"
    assert (stored.index, stored.seed, stored.width, stored.height) == (1, 1235, 64, 48)
    assert stored.output_format is OutputFormat.PNG
    assert stored.content_type == "image/png"
    assert stored.size_bytes == len(result.data)
    assert stored.sha256 == hashlib.sha256(result.data).hexdigest()
    assert await under_test.store.read(stored.key) == result.data
    assert under_test.names() == [f"{task_id}/1.png"]


@pytest.mark.parametrize(("fmt", "suffix"), [(OutputFormat.JPEG, "jpg"), (OutputFormat.WEBP, "webp")])
async def test_key_uses_the_format_extension(under_test: StoreUnderTest, fmt: OutputFormat, suffix: str) -> None:
    task_id = new_task_id()
    stored = await under_test.store.put(task_id, image(fmt=fmt, data=b"not really an image"))
    assert stored.key == f"{task_id}/0.{suffix}"
    assert await under_test.store.read(stored.key) == b"not really an image"


async def test_put_again_replaces(under_test: StoreUnderTest) -> None:
    task_id = new_task_id()
    for index in range(3):
        await under_test.store.put(task_id, image(index=index))
    stored = await under_test.store.put(task_id, image(index=0, data=b"second attempt"))

    assert await under_test.store.read(stored.key) == b"second attempt"
    assert under_test.names() == [f"{task_id}/0.png", f"{task_id}/1.png", f"{task_id}/2.png"]


@pytest.mark.parametrize("task_id", ["../escape", "task_../x", "TASK_ABC", "task_", "task_12/34", "task_xyz"])
async def test_put_refuses_a_malformed_task_id(under_test: StoreUnderTest, task_id: str) -> None:
    with pytest.raises(ValueError, match="task id"):
        await under_test.store.put(task_id, image())
    assert under_test.names() == []


async def test_read_unknown_key_is_not_found(under_test: StoreUnderTest) -> None:
    with pytest.raises(ResultNotFound) as info:
        await under_test.store.read(f"{new_task_id()}/0.png")
    assert (info.value.status, info.value.code) == (404, "result_not_found")


HOSTILE_KEYS = [
    "../secret.png",
    "/etc/passwd",
    "task_abc/../task_def/0.png",
    "task_abc//0.png",
    "task_abc/0.png\x00.txt",
    "%2e%2e/secret.png",
    "task_abc/0.jpeg",
    "task_abc/00.png",
    "task_abc/\u0661.png",
    "task_abc",
    "",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
async def test_hostile_keys_are_not_found(under_test: StoreUnderTest, key: str) -> None:
    assert not is_valid_key(key)
    with pytest.raises(ResultNotFound):
        await under_test.store.read(key)


async def test_delete_task_removes_its_images_and_is_idempotent(under_test: StoreUnderTest) -> None:
    store = under_test.store
    doomed, kept = new_task_id(), new_task_id()
    first = await store.put(doomed, image(index=0))
    await store.put(doomed, image(index=1))
    survivor = await store.put(kept, image(index=0))

    await store.delete_task(doomed)
    await store.delete_task(doomed)
    await store.delete_task(new_task_id())  # never existed

    with pytest.raises(ResultNotFound):
        await store.read(first.key)
    assert under_test.names() == [survivor.key]
    assert await store.read(survivor.key) == image(index=0).data


async def test_delete_task_refuses_a_malformed_task_id(under_test: StoreUnderTest) -> None:
    with pytest.raises(ValueError, match="task id"):
        await under_test.store.delete_task("..")


async def test_delete_older_than_keeps_and_removes_whole_tasks(under_test: StoreUnderTest) -> None:
    now = datetime.now(UTC)
    old, new, mixed = new_task_id(), new_task_id(), new_task_id()
    for task_id in (old, new, mixed):
        for index in (0, 1):
            await under_test.store.put(task_id, image(index=index))
    for key in (f"{old}/0.png", f"{old}/1.png", f"{mixed}/0.png"):
        under_test.age(key, now - timedelta(days=2))

    removed = await under_test.store.delete_older_than(now - timedelta(days=1))

    assert removed == 2
    assert under_test.names() == sorted(f"{task}/{index}.png" for task in (new, mixed) for index in (0, 1))
    assert await under_test.store.delete_older_than(now - timedelta(days=1)) == 0


async def test_delete_older_than_on_an_empty_store_and_naive_cutoff(under_test: StoreUnderTest) -> None:
    assert await under_test.store.delete_older_than(datetime.now(UTC)) == 0
    with pytest.raises(ValueError, match="timezone"):
        await under_test.store.delete_older_than(datetime(2025, 1, 1))  # naive on purpose
