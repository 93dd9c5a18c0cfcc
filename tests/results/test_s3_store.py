"""S3ResultStore's own workings against a real moto server: what it stores, its faults translated to
StorageUnavailable, hostile keys stopped before any request, presigned links; and the settings."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from qwen_image_server.domain import GenerationRequest, ImageResult, OutputFormat
from qwen_image_server.errors import StorageUnavailable
from qwen_image_server.results import ResultNotFound
from qwen_image_server.results.links import PresignedLinks
from qwen_image_server.results.s3 import S3ResultStore
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import Progress, Task, TaskStatus, new_task_id
from tests.results.conftest import BUCKET, DUMMY_AWS, s3_client, set_last_modified

pytestmark = pytest.mark.anyio


def image(index: int = 0, fmt: OutputFormat = OutputFormat.JPEG, data: bytes = b"jpeg bytes") -> ImageResult:
    return ImageResult(data=data, output_format=fmt, width=64, height=48, seed=1, index=index)


def finished_task(task_id: str, finished: datetime) -> Task:
    request = GenerationRequest.create(model="qwen-image", prompt="fox", width=256, height=256, num_inference_steps=2)
    return Task(
        id=task_id, status=TaskStatus.SUCCEEDED, request=request, dialect="native", owner=None, priority=0,
        callback_url=None, attempts=1, max_attempts=3, progress=Progress(2, 2), results=(), error=None,
        cancel_requested=False, created_at=finished, started_at=finished, finished_at=finished, updated_at=finished,
    )  # fmt: skip


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def store(s3_endpoint: str) -> S3ResultStore:
    return S3ResultStore(BUCKET, f"{new_task_id()}/prefix", endpoint_url=s3_endpoint)


async def test_objects_carry_their_content_type_under_the_prefix(store: S3ResultStore, s3_endpoint: str) -> None:
    task_id = new_task_id()
    stored = await store.put(task_id, image(fmt=OutputFormat.WEBP))
    head = s3_client(s3_endpoint).head_object(Bucket=BUCKET, Key=f"{store.prefix}/{stored.key}")
    assert head["ContentType"] == "image/webp"
    assert head["ContentLength"] == stored.size_bytes


def test_results_url_gives_bucket_and_prefix(s3_endpoint: str) -> None:
    store = S3ResultStore.from_url("s3://my-bucket/a/b/", endpoint_url=s3_endpoint)
    assert (store.bucket, store.prefix) == ("my-bucket", "a/b")
    assert S3ResultStore.from_url("s3://my-bucket").prefix == ""


async def test_an_unreachable_endpoint_is_storage_unavailable(s3_endpoint: str, closed_port: int) -> None:
    store = S3ResultStore(BUCKET, "p", endpoint_url=f"http://127.0.0.1:{closed_port}")
    task_id = new_task_id()
    for attempt in (store.put(task_id, image()), store.read(f"{task_id}/0.jpg"), store.delete_task(task_id)):
        with pytest.raises(StorageUnavailable) as caught:
            await attempt
        message = caught.value.message
        assert repr(BUCKET) in message and "EndpointConnectionError" in message
        assert DUMMY_AWS["AWS_ACCESS_KEY_ID"] not in message.replace(BUCKET, "")
        assert caught.value.status == 503 and "Retry-After" in (caught.value.headers or {})


async def test_a_missing_bucket_is_storage_unavailable(s3_endpoint: str) -> None:
    store = S3ResultStore("no-such-bucket", "p", endpoint_url=s3_endpoint)
    task_id = new_task_id()
    for attempt in (
        store.put(task_id, image()),
        store.read(f"{task_id}/0.jpg"),
        store.delete_older_than(datetime.now(UTC)),
    ):
        with pytest.raises(StorageUnavailable, match="'no-such-bucket' does not exist"):
            await attempt


@pytest.mark.parametrize("key", ["../secret.png", "task_abc/../x/0.png", "task_abc/0.png?x=1", ""])
async def test_hostile_keys_never_reach_s3(closed_port: int, s3_endpoint: str, key: str) -> None:
    """Against a dead endpoint: a request would be StorageUnavailable, so NotFound proves none was made."""
    store = S3ResultStore(BUCKET, "p", endpoint_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(ResultNotFound):
        await store.read(key)
    with pytest.raises(ResultNotFound):
        store.presigned_url(key, 60)


async def test_the_sweep_leaves_a_task_holding_objects_it_did_not_write(store: S3ResultStore, s3_endpoint: str) -> None:
    task_id, old = new_task_id(), datetime.now(UTC) - timedelta(days=2)
    stored = await store.put(task_id, image())
    foreign = f"{store.prefix}/{task_id}/notes.txt"
    s3_client(s3_endpoint).put_object(Bucket=BUCKET, Key=foreign, Body=b"mine")
    for name in (f"{store.prefix}/{stored.key}", foreign):
        set_last_modified(BUCKET, name, old)
    assert await store.delete_older_than(datetime.now(UTC)) == 0
    assert await store.read(stored.key) == b"jpeg bytes"


async def test_presigned_links_download_from_the_bucket_until_the_signed_link_would_expire(
    store: S3ResultStore, s3_endpoint: str
) -> None:
    task_id = new_task_id()
    stored = await store.put(task_id, image())
    now = datetime(2030, 1, 1, tzinfo=UTC)
    finished = now - timedelta(minutes=10)
    task = finished_task(task_id, finished)

    url, expires = PresignedLinks(store, ttl_seconds=3600, clock=lambda: now)(stored, task)

    assert expires == finished + timedelta(seconds=3600)
    assert url.startswith(f"{s3_endpoint}/{BUCKET}/{store.prefix}/{stored.key}?")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3000"]
    fresh_url, _ = PresignedLinks(store, ttl_seconds=3600)(stored, replace(task, finished_at=datetime.now(UTC)))
    async with httpx.AsyncClient() as client:
        assert (await client.get(fresh_url)).content == b"jpeg bytes"


def test_settings_refuse_presigned_links_without_s3_and_odd_results_urls(clean_env: None) -> None:
    with pytest.raises(ValidationError, match="results_links=presigned needs an S3 results_url"):
        Settings(results_links="presigned")
    with pytest.raises(ValidationError, match="7 days"):
        Settings(results_url="s3://b/p", results_links="presigned", result_ttl_seconds=8 * 86_400)
    for url in ("https://bucket/prefix", "s3://", "/srv/results"):
        with pytest.raises(ValidationError, match="s3://bucket/prefix"):
            Settings(results_url=url)
    assert Settings(results_url="s3://b/p", results_links="presigned").results_links == "presigned"
