"""What the sync and async clients share, free of I/O: request bodies from keyword arguments, input
images as the API takes them, answers and errors read back, the retry rule and the SSE decoder."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypedDict

import httpx

from qwen_image_server.client.errors import (
    APIError,
    AuthenticationError,
    NotFound,
    Overloaded,
    TaskCanceled,
    TaskFailed,
)
from qwen_image_server.client.types import Event, Finished, ImageRef, Preview, Progress, Queued, Running, Task

DEFAULT_URL = "http://127.0.0.1:8000"  # where `qwen-image serve` listens by default
URL_VARIABLE = "QWEN_IMAGE_URL"
KEY_VARIABLE = "QWEN_IMAGE_API_KEY"
TASKS = "/v1/tasks"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SERVER_WAIT = 60.0  # seconds a create may ask the server to hold its answer (servers cap it: max_wait_seconds)

# An input image: a path, the file's bytes, a PIL image, or a string that is an http(s) URL, a data
# URI or a path.
ImageInput = str | os.PathLike[str] | bytes | Any


class TaskOptions(TypedDict, total=False):
    """Keyword arguments of `generate`, `edit` and `submit`, named as in diffusers and the CLI; each
    maps to one field of POST /v1/tasks (docs/api.md). Omitted: the server's default."""

    model: str
    negative_prompt: str
    size: str  # "1024x1024" or a preset ("16:9", ...); or width and height
    width: int
    height: int
    steps: int  # num_inference_steps
    cfg: float  # true_cfg_scale
    guidance_scale: float
    seed: int
    n: int
    format: str  # output_format: png, jpeg, webp
    quality: int  # output_quality, for jpeg and webp
    max_sequence_length: int
    partial_images: int  # previews per image, streamed as Preview events
    acceleration: str
    loras: Sequence[str | Mapping[str, Any]]  # a name the server offers, or {"name"|"path": ..., "scale": ...}
    strength: float
    watermark: bool
    prompt_extend: bool
    safety_check: bool
    callback_url: str
    priority: int
    idempotency_key: str  # default: a fresh one per call, so retried creates make one task


_RENAMED = {
    "steps": "num_inference_steps",
    "cfg": "true_cfg_scale",
    "format": "output_format",
    "quality": "output_quality",
}


def create_body(prompt: str, images: Sequence[ImageInput], options: TaskOptions, default_model: str) -> dict[str, Any]:
    """The JSON of POST /v1/tasks."""
    body: dict[str, Any] = {"model": default_model, "prompt": prompt}
    for name, value in options.items():
        if name == "idempotency_key" or value is None:
            continue
        body[_RENAMED.get(name, name)] = value
    if "loras" in options:
        body["loras"] = [{"name": lora} if isinstance(lora, str) else dict(lora) for lora in options["loras"]]
    if images:
        body["images"] = [encode_image(image) for image in images]
    return body


def default_model(images: Sequence[ImageInput]) -> str:
    return edit_model(images) if images else "qwen-image"


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One input image, or several: a list or tuple is several (a str or bytes is one)."""
    return list(images) if isinstance(images, list | tuple) else [images]


def server_wait(timeout: float | None) -> float:
    return SERVER_WAIT if timeout is None else min(timeout, SERVER_WAIT)


def absolute(base: str, path: str) -> str:
    """API paths under the base URL; result URLs (absolute, maybe another host) as they are."""
    return path if path.startswith(("http://", "https://")) else base + path


def edit_model(images: Sequence[ImageInput]) -> str:
    """The edit model for this many inputs: qwen-image-edit takes one, qwen-image-edit-plus 1-3."""
    return "qwen-image-edit" if len(images) <= 1 else "qwen-image-edit-plus"


def encode_image(image: ImageInput) -> str:
    """An input image as the API takes it: URLs and data URIs as they are, anything else as base64."""
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    if isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif hasattr(image, "save"):  # a PIL image; PIL itself is not imported for this
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"an input image is a path, bytes, a PIL image or a URL, not {type(image).__name__}")
    return "data:;base64," + base64.b64encode(data).decode("ascii")


def idempotency_key(options: TaskOptions) -> str:
    return options.get("idempotency_key") or f"qwen-image-client-{uuid.uuid4()}"


def base_url(url: str | None) -> str:
    return (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(KEY_VARIABLE)
    return {"Authorization": f"Bearer {key}"} if key else {}


def task_of(response: httpx.Response) -> Task:
    return Task.from_json(response.json())


def api_error(response: httpx.Response) -> APIError:
    """The server's native error body as an exception; any other body (a proxy's page) is summarized."""
    try:
        error = response.json()["error"]
        code, message, param = str(error["code"]), str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        code, message, param = "http_error", response.text[:200] or response.reason_phrase, None
    kind = {401: AuthenticationError, 403: AuthenticationError, 404: NotFound, 429: Overloaded, 503: Overloaded}
    error_class = kind.get(response.status_code, APIError)
    return error_class(message, status=response.status_code, code=code, param=param, retry_after=retry_after(response))


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_retries` more tries of a call refused with 429 or 503, or that got no answer.
    The wait is the server's `Retry-After` (a refusal asking to wait longer than `max_wait` is raised
    at once: the caller can decide), else an exponential backoff with jitter."""

    max_retries: int = 3
    max_wait: float = 60.0
    backoff: float = 0.5

    def after_status(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying this answer, or None to raise it."""
        if response.status_code not in (429, 503) or attempt >= self.max_retries:
            return None
        asked = retry_after(response)
        if asked is None:
            return self._backoff(attempt)
        return asked if asked <= self.max_wait else None

    def after_error(self, error: httpx.TransportError, attempt: int, *, replay_safe: bool) -> float | None:
        """Seconds to wait before retrying after no answer, or None to raise. A request that was
        never sent (no connection) may always be retried; one that may have reached the server only
        when running it twice is harmless (reads, and creates with an Idempotency-Key)."""
        never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if attempt >= self.max_retries or not (never_sent or replay_safe):
            return None
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2.0**attempt, self.max_wait) * (0.5 + random.random() / 2)


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: a number, or an HTTP date (RFC 9110)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


class EventDecoder:
    """Server-Sent Events (the WHATWG format) from lines, as the client's typed events."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._event = ""
        self._data: list[str] = []
        self._previews_seen: set[tuple[int, int | None]] = set()  # a reopened stream sends them again

    def reopened(self) -> None:
        """Forget a half-received event: the connection dropped and a new stream begins."""
        self._event, self._data = "", []

    def feed(self, line: str) -> Event | None:
        """One line without its line ending; an event when the line ends one."""
        if line == "":
            event, data = self._event or "message", "\n".join(self._data)
            self._event, self._data = "", []
            return self._typed(event, data) if data else None
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def _typed(self, event: str, data: str) -> Event | None:
        body: dict[str, Any] = json.loads(data)
        if event == "queued":
            return Queued(self.task_id, body.get("queue_position"))
        if event == "progress":
            progress = body["progress"]
            return Running(self.task_id, Progress(progress["step"], progress["total"], progress["percent"]))
        if event == "preview":
            image = ImageRef.from_json(body)
            if (image.index, image.partial_index) in self._previews_seen:
                return None
            self._previews_seen.add((image.index, image.partial_index))
            return Preview(self.task_id, image)
        if event in ("succeeded", "failed", "canceled"):
            return Finished(Task.from_json(body))
        return None  # an event type this client does not know yet


def poll_intervals(first: float = 0.2, factor: float = 1.5, most: float = 2.0) -> Iterator[float]:
    """The pauses between polls of a task: quick at first (small tasks end fast), then every `most`."""
    pause = first
    while True:
        yield pause
        pause = min(pause * factor, most)


def ended_error(task: Task) -> TaskFailed | None:
    """The exception for a task that ended without images; None for a succeeded one."""
    if task.status == "succeeded":
        return None
    return TaskCanceled(task) if task.status == "canceled" else TaskFailed(task)


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout
