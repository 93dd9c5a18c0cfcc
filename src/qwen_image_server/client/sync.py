"""`Client`: the native API from blocking code. `AsyncClient` (aio.py) has the same methods."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Unpack

import httpx

from qwen_image_server.client import wire
from qwen_image_server.client.errors import ConnectionFailed, WaitTimeout
from qwen_image_server.client.types import Event, Finished, Image, ImageRef, Result, Task
from qwen_image_server.client.wire import ImageInput, RetryPolicy, TaskOptions


class Client:
    """A client of one qwen-image-server. `base_url` defaults to $QWEN_IMAGE_URL, then
    http://127.0.0.1:8000; `api_key` to $QWEN_IMAGE_API_KEY (none: an open server). `timeout` bounds
    each HTTP call (not the wait for a task: see `timeout` of `generate` and `wait`). Calls refused
    with 429 or 503, or that got no answer, are retried up to `max_retries` times (docs/client.md)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = wire.base_url(base_url)
        self._auth = wire.auth_headers(api_key)
        self._timeout = timeout
        self._retry = RetryPolicy(max_retries=max_retries, max_wait=max_retry_wait)
        self._owns_http = http_client is None  # a caller's own httpx client stays open
        self._http = http_client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Submit, wait and download in one call.

    def generate(
        self,
        prompt: str,
        *,
        image: ImageInput | None = None,
        timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        """Text-to-image (with `image`: image-to-image, see `strength`); waits for the images and
        downloads them. Raises `TaskFailed`/`TaskCanceled` if the task ends without images and
        `WaitTimeout` after `timeout` seconds (None: no limit)."""
        images = [] if image is None else [image]
        return self._run(prompt, images, timeout, {"model": "qwen-image", **options})

    def edit(
        self,
        prompt: str,
        images: ImageInput | Sequence[ImageInput],
        *,
        timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        """Edit one image (qwen-image-edit) or combine two or three (qwen-image-edit-plus); as `generate`."""
        inputs = wire.as_image_list(images)
        return self._run(prompt, inputs, timeout, {"model": wire.edit_model(inputs), **options})

    def _run(self, prompt: str, images: list[ImageInput], timeout: float | None, options: TaskOptions) -> Result:
        deadline = wire.deadline_of(timeout)
        task = self.submit(prompt, images=images, wait=wire.server_wait(timeout), **options)
        if not task.done:
            task = self.wait(task.id, timeout=wire.remaining(deadline))
        return self.result(task)

    # The task API.

    def submit(
        self, prompt: str, *, images: Sequence[ImageInput] = (), wait: float = 0, **options: Unpack[TaskOptions]
    ) -> Task:
        """Queue a task and return it at once, or once it ends if that is within `wait` seconds
        (the server caps the wait). The model defaults to qwen-image, or an edit model with images."""
        body = wire.create_body(prompt, images, options, wire.default_model(images))
        headers = {wire.IDEMPOTENCY_HEADER: wire.idempotency_key(options)}
        params = {"wait": wait} if wait else None
        response = self._call("POST", wire.TASKS, json=body, headers=headers, params=params, waits=wait)
        return wire.task_of(response)

    def get(self, task_id: str) -> Task:
        return wire.task_of(self._call("GET", f"{wire.TASKS}/{task_id}"))

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once it has ended (succeeded, failed or canceled: check `status`, or use
        `result`). Raises `WaitTimeout` after `timeout` seconds (None: no limit)."""
        deadline = wire.deadline_of(timeout)
        for pause in wire.poll_intervals():
            task = self.get(task_id)
            if task.done:
                return task
            left = wire.remaining(deadline)
            if left == 0:
                raise WaitTimeout(task, timeout or 0)
            time.sleep(pause if left is None else min(pause, left))
        raise AssertionError("poll_intervals never ends")

    def cancel(self, task_id: str) -> Task:
        """Cancel a queued or running task (409 `task_conflict` once it has ended)."""
        return wire.task_of(self._call("POST", f"{wire.TASKS}/{task_id}/cancel", replay_safe=False))

    def result(self, task: Task) -> Result:
        """A succeeded task with its images downloaded; raises `TaskFailed`/`TaskCanceled` otherwise."""
        if (error := wire.ended_error(task)) is not None:
            raise error
        return Result(task, [Image(**vars(ref), content=self.download(ref)) for ref in task.results])

    def download(self, image: ImageRef) -> bytes:
        """The bytes of a result or preview (its URL is signed: no API key is sent)."""
        return self._call("GET", image.url, authorize=False).content

    def stream(self, task_id: str) -> Iterator[Event]:
        """The task's events as they happen (`Queued`, `Running` with progress, `Preview`), ending
        with `Finished`. A dropped stream is reopened (up to `max_retries` times)."""
        decoder = wire.EventDecoder(task_id)
        for reopened in range(self._retry.max_retries + 1):
            decoder.reopened()
            try:
                with self._events(task_id) as response:
                    for line in response.iter_lines():
                        if (event := decoder.feed(line)) is not None:
                            yield event
                            if isinstance(event, Finished):
                                return
            except httpx.TransportError as error:
                if reopened == self._retry.max_retries:
                    raise ConnectionFailed(f"the event stream of {task_id} broke: {error}") from error
        raise ConnectionFailed(f"the event stream of {task_id} ended {self._retry.max_retries + 1} times early")

    @contextmanager
    def _events(self, task_id: str) -> Iterator[httpx.Response]:
        response = self._call("GET", f"{wire.TASKS}/{task_id}/events", stream=True)
        try:
            yield response
        finally:
            response.close()

    # HTTP with retries.

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        waits: float = 0,
        authorize: bool = True,
        replay_safe: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        url = wire.absolute(self.base_url, path)
        headers = {**(self._auth if authorize else {}), **(headers or {})}
        timeout = self._timeout + waits
        for attempt in range(self._retry.max_retries + 1):
            request = self._http.build_request(method, url, json=json, headers=headers, params=params, timeout=timeout)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                pause = self._retry.after_error(error, attempt, replay_safe=replay_safe)
                if pause is None:
                    raise ConnectionFailed(f"{method} {url}: {error!r}") from error
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                pause = self._retry.after_status(response, attempt)
                if pause is None:
                    raise wire.api_error(response)
            time.sleep(pause)
        raise AssertionError("the retry policy ends every loop")
