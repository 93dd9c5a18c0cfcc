"""End to end through the real service (tiny model) with results in S3 (a moto server): a native task
succeeds, its result URL downloads the image (signed: through our API, HEAD and Range included;
presigned: straight from the bucket), and retention deletes the task's objects."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from qwen_image_server.engine import Engine
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.worker.maintenance import Maintenance
from tests.api.conftest import FAST_SERVICE, TINY_TASK, wait_until
from tests.conftest import TINY_EVERYWHERE, asgi_client
from tests.results.conftest import BUCKET, s3_client

pytestmark = pytest.mark.anyio


def s3_settings(tmp_path: Path, endpoint: str, **more: Any) -> Settings:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    url = f"s3://{BUCKET}/{prefix}"
    return Settings(**TINY_EVERYWHERE, **FAST_SERVICE, data_dir=tmp_path / "data", results_url=url,
                    s3_endpoint_url=endpoint, **more)  # fmt: skip


@pytest.fixture
async def running(request: pytest.FixtureRequest, tmp_path: Path, engine: Engine) -> AsyncIterator[Service]:
    settings = s3_settings(tmp_path, request.getfixturevalue("s3_endpoint"), results_links=request.param)
    service = Service.build(settings, engine=engine, run_worker=True)
    async with service.running():
        yield service


async def succeeded_task(client: httpx.AsyncClient) -> dict[str, Any]:
    created = await client.post("/v1/tasks", json=TINY_TASK)
    assert created.status_code == 202, created.text
    task = await wait_until(client, created.json()["id"], "succeeded", "failed")
    assert task["status"] == "succeeded", task["error"]
    return task


def bucket_names(endpoint: str, settings: Settings) -> list[str]:
    prefix = (settings.results_url or "").removeprefix(f"s3://{BUCKET}/")
    listing = s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return [obj["Key"].removeprefix(f"{prefix}/") for obj in listing.get("Contents", [])]


@pytest.mark.parametrize("running", ["signed"], indirect=True)
async def test_signed_links_serve_s3_images_through_the_api(running: Service, s3_endpoint: str) -> None:
    async with asgi_client(running) as client:
        task = await succeeded_task(client)
        [result] = task["results"]
        parts = urlsplit(result["url"])
        assert parts.path == f"/v1/results/{task['id']}/0.png"
        path = f"{parts.path}?{parts.query}"

        image = await client.get(path)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (256, 256)
        head = await client.head(path)
        assert head.headers["content-length"] == str(len(image.content)) and head.content == b""
        ranged = await client.get(path, headers={"Range": "bytes=0-7"})
        assert ranged.status_code == 206 and ranged.content == image.content[:8]
        cached = await client.get(path, headers={"If-None-Match": image.headers["etag"]})
        assert cached.status_code == 304

        stale = running.signer.sign(f"{task['id']}/0.png", now=datetime.now(UTC) - timedelta(days=2))
        assert (await client.get(stale.path)).status_code == 410
        assert bucket_names(s3_endpoint, running.settings) == [f"{task['id']}/0.png"]

        # Retention: the task and its objects go together.
        keep_nothing = running.settings.model_copy(update={"task_retention_seconds": 0})
        assert await Maintenance(keep_nothing, running.store, running.results).clean_up() == (1, 0)
        assert bucket_names(s3_endpoint, running.settings) == []
        assert (await client.get(path)).status_code == 404


@pytest.mark.parametrize("running", ["presigned"], indirect=True)
async def test_presigned_links_download_from_the_bucket(running: Service, s3_endpoint: str) -> None:
    async with asgi_client(running) as client:
        task = await succeeded_task(client)
    [result] = task["results"]
    assert result["url"].startswith(f"{s3_endpoint}/{BUCKET}/")
    async with httpx.AsyncClient() as bucket:
        image = await bucket.get(result["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (256, 256)
    assert image.content == await running.results.read(f"{task['id']}/0.png")
