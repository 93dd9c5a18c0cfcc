"""Absolute, signed links to result images, as every API answer and callback gives them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from qwen_image_server.results.signing import UrlSigner
from qwen_image_server.tasks.model import StoredImage, Task

# (image, task) -> (absolute signed URL, its expiry): how every dialect links result images
ResultLinker = Callable[[StoredImage, Task], tuple[str, datetime]]


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
