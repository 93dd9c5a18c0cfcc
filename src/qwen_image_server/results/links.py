"""Absolute links to result images, as every API answer and callback gives them.

Two kinds, chosen by the `results_links` setting through `result_linker`, the one seam:
- `SignedLinks` (default): our own HMAC-signed URLs; the API process reads the image from the store.
- `PresignedLinks`: presigned GET URLs of the store itself (S3), so image bytes bypass the API.
Both expire `result_ttl_seconds` after the task finished.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from math import ceil
from typing import Protocol

from qwen_image_server.results.signing import UrlSigner
from qwen_image_server.tasks.model import StoredImage, Task, utcnow

# (image, task) -> (absolute URL, its expiry): how every dialect links result images
ResultLinker = Callable[[StoredImage, Task], tuple[str, datetime]]


class Presigner(Protocol):
    """A store that can hand out URLs of its own objects (S3ResultStore)."""

    def presigned_url(self, key: str, expires_in: int) -> str: ...


def result_linker(signer: UrlSigner, presigner: Presigner | None, base: str) -> ResultLinker:
    """The links of this deployment: presigned when the store presigns, else signed under `base`."""
    if presigner is not None:
        return PresignedLinks(presigner, signer.ttl_seconds)
    return SignedLinks(signer, base)


def link_expiry(task: Task, ttl_seconds: int) -> datetime:
    """When a task's result links die (whole seconds, as the signed URL's `expires`)."""
    finished = task.finished_at or task.updated_at
    return datetime.fromtimestamp(int(finished.timestamp()) + ttl_seconds, UTC)


class SignedLinks:
    """Result URLs under `base` (e.g. `https://images.example.com`). A URL expires
    `result_ttl_seconds` after its task finished, so every poll of a task returns the same URL
    (cacheable) and it dies with the image."""

    def __init__(self, signer: UrlSigner, base: str) -> None:
        self._signer = signer
        self._base = base.rstrip("/")

    def __call__(self, image: StoredImage, task: Task) -> tuple[str, datetime]:
        signed = self._signer.sign(image.key, now=task.finished_at or task.updated_at)
        return f"{self._base}{signed.path}", datetime.fromtimestamp(signed.expires, UTC)


class PresignedLinks:
    """Presigned URLs that die when the signed URL would. A presigned URL carries its signing time,
    so each poll gets a different URL (same expiry); one whose time has passed gets 1 second."""

    def __init__(self, presigner: Presigner, ttl_seconds: int, clock: Callable[[], datetime] = utcnow) -> None:
        self._presigner = presigner
        self._ttl_seconds = ttl_seconds
        self._clock = clock

    def __call__(self, image: StoredImage, task: Task) -> tuple[str, datetime]:
        expires = link_expiry(task, self._ttl_seconds)
        remaining = max(ceil((expires - self._clock()).total_seconds()), 1)
        return self._presigner.presigned_url(image.key, remaining), expires
