"""A real S3-compatible server for the results tests: moto in server mode on a free loopback port,
reached by the real boto3 client over HTTP (no mocked client), and the stores under test.

Credentials are dummies in the environment, read through boto3's default chain as in production.
Each test gets its own prefix in the one bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from qwen_image_server.results import LocalResultStore, ResultStore
from qwen_image_server.results.s3 import S3ResultStore

BUCKET = "qwen-results"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",  # no developer profile leaks in
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@contextmanager
def moto_server(address: str, bucket: str) -> Iterator[str]:
    """A moto S3 server on `address` holding an empty `bucket`, with dummy AWS credentials in the
    environment (and no developer profile); yields its endpoint."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in DUMMY_AWS.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address=address, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint of a moto S3 server holding the bucket `BUCKET`."""
    with moto_server("127.0.0.1", BUCKET) as endpoint:
        yield endpoint


def s3_client(endpoint: str) -> Any:
    """A client of the test server, for the tests' own look at the bucket."""
    return boto3.client("s3", endpoint_url=endpoint)


def set_last_modified(bucket: str, name: str, when: datetime) -> None:
    """Age an object on the moto server (S3 has no request for that): the in-process server's state
    is changed, as os.utime changes a file's."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    key = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys[name]
    key.last_modified = when.astimezone(UTC).replace(tzinfo=None)  # moto keeps naive UTC


@dataclass
class StoreUnderTest:
    """A store and how the tests reach behind it: list what it holds, age a task's images."""

    kind: str
    store: ResultStore
    root: Path | None = None  # local
    endpoint: str | None = None  # s3
    prefix: str = ""

    def names(self) -> list[str]:
        """The result keys the store holds (files or objects), sorted."""
        if self.root is not None:
            if not self.root.exists():
                return []
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())
        assert self.endpoint is not None
        pages = s3_client(self.endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.prefix)
        return sorted(obj["Key"].removeprefix(f"{self.prefix}/") for page in pages for obj in page.get("Contents", []))

    def age(self, key: str, when: datetime) -> None:
        """Make one stored image look last written at `when`."""
        if self.root is not None:
            import os

            os.utime(self.root / key, (when.timestamp(), when.timestamp()))
            os.utime((self.root / key).parent, (when.timestamp(), when.timestamp()))
        else:
            set_last_modified(BUCKET, f"{self.prefix}/{key}", when)


@pytest.fixture(params=["local", "s3"])
async def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    if request.param == "local":
        root = tmp_path / "results"
        yield StoreUnderTest("local", LocalResultStore(root), root=root)
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = f"test-{uuid.uuid4().hex[:12]}/results"
    store = S3ResultStore(BUCKET, prefix, endpoint_url=endpoint)
    yield StoreUnderTest("s3", store, endpoint=endpoint, prefix=prefix)
