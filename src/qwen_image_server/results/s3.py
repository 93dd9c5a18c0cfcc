"""`S3ResultStore`: result images as objects in an S3-compatible bucket (AWS S3, MinIO, R2...),
under `<prefix>/<task id>/<index>.<ext>`.

boto3 is AWS's own client: it reads region and credentials the way the AWS tools do (environment,
profiles, roles), retries throttling and 5xx answers itself, and presigns URLs. Its calls block, so
each one runs in a worker thread; one client serves the store (boto3 clients are thread-safe).
A single PUT is atomic in S3, so a reader sees a whole image or none, as with the local store.

Keys arrive from URLs: each is checked against the strict key pattern before any request is made.
botocore's errors are translated here, once: the storage's own failures (unreachable, 5xx,
throttled, denied, no such bucket) become `StorageUnavailable`, naming the bucket and the S3 error
code only (never an endpoint's answer text, which may name the caller's identity); a missing
object becomes `ResultNotFound`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from qwen_image_server.domain import ImageResult
from qwen_image_server.errors import StorageUnavailable
from qwen_image_server.results.store import (
    ResultNotFound,
    is_valid_key,
    is_valid_task_id,
    parse_results_url,
    result_key,
    stored_image,
)
from qwen_image_server.tasks.model import StoredImage

T = TypeVar("T")
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# Bounded: a worker waits on a dead endpoint for seconds, not minutes, before the task is retried.
_CLIENT_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 30}


class S3ResultStore:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # A custom endpoint (MinIO, moto, an IP address) rarely serves bucket subdomains: path style.
        addressing = {"addressing_style": "path"} if endpoint_url else {}
        # SigV4 for presigned URLs too (boto3 would presign with the legacy SigV2, which R2 and
        # newer AWS regions refuse); it also bounds them to 7 days.
        config = Config(**_CLIENT_CONFIG, s3=addressing, signature_version="s3v4")
        self._client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None) -> S3ResultStore:
        bucket, prefix = parse_results_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url)

    async def put(self, task_id: str, result: ImageResult) -> StoredImage:
        key = result_key(task_id, result)
        content_type = result.output_format.content_type
        put = functools.partial(
            self._client.put_object, Bucket=self.bucket, Key=self._name(key), Body=result.data, ContentType=content_type
        )
        await self._run("store an image", put)
        return stored_image(key, result)

    async def read(self, key: str) -> bytes:
        if not is_valid_key(key):
            raise ResultNotFound("no such result")
        return await self._run("read an image", self._read, key)

    async def delete_task(self, task_id: str) -> None:
        if not is_valid_task_id(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        await self._run("delete images", self._delete_task, task_id)

    async def delete_older_than(self, cutoff: datetime) -> int:
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        return await self._run("delete old images", self._sweep, cutoff)

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A GET URL of the object itself, valid `expires_in` seconds (signed locally: no request)."""
        if not is_valid_key(key):
            raise ResultNotFound("no such result")
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        with self._translated("sign a link"):
            url: str = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        return url

    # -- in worker threads -----------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _read(self, key: str) -> bytes:
        answer = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
        data: bytes = answer["Body"].read()
        return data

    def _delete_task(self, task_id: str) -> None:
        self._delete([obj["Key"] for obj in self._list(self._name(f"{task_id}/"))])

    def _sweep(self, cutoff: datetime) -> int:
        tasks: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        start = len(self._name(""))
        for obj in self._list(self._name("")):
            task_id = obj["Key"][start:].partition("/")[0]
            if is_valid_task_id(task_id):
                tasks[task_id].append(obj)
        doomed = [
            obj["Key"]
            for objects in tasks.values()
            # A task with an object we did not write is not ours to sweep (as in the local store).
            if all(is_valid_key(o["Key"][start:]) and o["LastModified"] < cutoff for o in objects)
            for obj in objects
        ]
        self._delete(doomed)
        return len(doomed)

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _delete(self, names: list[str]) -> None:
        for start in range(0, len(names), _DELETE_BATCH):
            batch = [{"Key": name} for name in names[start : start + _DELETE_BATCH]]
            answer = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                code = answer["Errors"][0].get("Code", "unknown")
                message = f"the results bucket {self.bucket!r} refused to delete images: {code}"
                raise StorageUnavailable(message, retry_after=30)

    # -- the error edge --------------------------------------------------------------------------

    async def _run(self, action: str, call: Callable[..., T], *args: Any) -> T:
        with self._translated(action):
            return await asyncio.to_thread(call, *args)

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action) from exc
        except BotoCoreError as exc:  # no connection, timeouts, no credentials, a broken stream
            name = type(exc).__name__
            raise StorageUnavailable(
                f"the results bucket {self.bucket!r} cannot {action}: {name}", retry_after=30
            ) from exc

    def _client_error(self, exc: ClientError, action: str) -> Exception:
        code = str(exc.response.get("Error", {}).get("Code", "unknown"))
        if code in _NOT_FOUND:
            return ResultNotFound("no such result; it may have expired and been deleted")
        if code == "NoSuchBucket":
            return StorageUnavailable(f"the results bucket {self.bucket!r} does not exist", retry_after=30)
        return StorageUnavailable(f"the results bucket {self.bucket!r} refused to {action}: {code}", retry_after=30)
