"""The results store seam: where the encoded image bytes of finished tasks live.

`LocalResultStore` (results/local.py) keeps them in a folder, `S3ResultStore` (results/s3.py) in an
S3-compatible bucket; nothing here assumes a local disk. A key is an opaque string to callers,
made by `result_key`: `<task id>/<index>.<extension>`. It is also the path of the public result URL,
which is why every implementation must treat a key from outside as hostile (see `is_valid_key`).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Protocol

from qwen_image_server.domain import ImageResult
from qwen_image_server.errors import CallerError
from qwen_image_server.tasks.model import StoredImage

# Task ids are `task_` + lowercase hex (tasks.model.new_task_id). Explicit ASCII classes, not \d or
# \w, which also match other scripts' digits and letters.
TASK_ID_PATTERN = re.compile(r"task_[0-9a-f]{1,64}")
# No leading zeros, so each image has exactly one key; `jpg`, never `jpeg` (OutputFormat.extension).
# `{task}/{index}.{ext}` for results, `{task}/{index}-partial{n}.{ext}` for previews.
KEY_PATTERN = re.compile(r"(task_[0-9a-f]{1,64})/(0|[1-9][0-9]{0,5})(-partial[0-9])?\.(png|jpg|webp)")


class ResultNotFound(CallerError):
    status = 404
    code = "result_not_found"


def is_valid_task_id(task_id: str) -> bool:
    return TASK_ID_PATTERN.fullmatch(task_id) is not None


def is_valid_key(key: str) -> bool:
    """True only for keys `result_key` can make: no `..`, slashes, encodings or other surprises."""
    return KEY_PATTERN.fullmatch(key) is not None


def result_key(task_id: str, result: ImageResult) -> str:
    """The key of one result image. Raises ValueError for a malformed task id (a caller's bug)."""
    partial = f"-partial{result.partial_index}" if result.partial_index is not None else ""
    key = f"{task_id}/{result.index}{partial}.{result.output_format.extension}"
    if not is_valid_key(key):
        raise ValueError(f"cannot store a result for task id {task_id!r} with index {result.index}")
    return key


def stored_image(key: str, result: ImageResult) -> StoredImage:
    """What a store records of an image it has just written under `key`: its size and SHA-256."""
    return StoredImage(
        key=key,
        index=result.index,
        seed=result.seed,
        width=result.width,
        height=result.height,
        output_format=result.output_format,
        size_bytes=len(result.data),
        sha256=hashlib.sha256(result.data).hexdigest(),
        partial_index=result.partial_index,
    )


def parse_results_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> `("bucket", "some/prefix")`; ValueError for anything else."""
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not bucket:
        raise ValueError(f"results_url must look like s3://bucket/prefix, got {url!r}")
    return bucket, prefix.strip("/")


class ResultStore(Protocol):
    """Rules every implementation keeps:
    - `put` is atomic: a reader sees the whole image or nothing. Putting the same key again (a
      retried task) replaces it.
    - `read` raises `ResultNotFound` for any key it does not hold, malformed keys included, and
      never reads anything outside the store.
    - Times are timezone-aware; a naive datetime is refused with ValueError.
    - A failure of the storage itself (disk full, read-only, unreachable) is `StorageUnavailable`,
      never the library's own error: the worker retries the task later, the API answers 503.
    """

    async def put(self, task_id: str, result: ImageResult) -> StoredImage:
        """Store one image; the returned `StoredImage` carries its key, size and SHA-256."""
        ...

    async def read(self, key: str) -> bytes: ...

    async def delete_task(self, task_id: str) -> None:
        """Remove every image of the task; nothing to remove is not an error."""
        ...

    async def delete_older_than(self, cutoff: datetime) -> int:
        """Remove the images of each task whose images were all last written before `cutoff`
        (a task is kept or removed whole). Returns how many stored objects were removed."""
        ...
