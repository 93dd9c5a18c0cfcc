"""`AsyncClient`: the native API from asyncio code, with the methods of `Client` (sync.py) awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Unpack

import httpx

from qwen_image_server.client import wire
from qwen_image_server.client.errors import ConnectionFailed, WaitTimeout
from qwen_image_server.client.types import Event, Finished, Image, ImageRef, Result, Task
from qwen_image_server.client.wire import ImageInput, RetryPolicy, TaskOptions


class AsyncClient:
    """As `Client`, for asyncio: every method is awaited, `stream` is an async iterator and `result`
    downloads a task's images concurrently."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = wire.base_url(base_url)
        self._auth = wire.auth_headers(api_key)
        self._timeout = timeout
        self._retry = RetryPolicy(max_retries=max_retries, max_wait=max_retry_wait)
        self._owns_http = http_client is None  # a caller's own httpx client stays open
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def generate(
        self,
        prompt: str,
        *,
        image: ImageInput | None = None,
        timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        images = [] if image is None else [image]
        return await self._run(prompt, images, timeout, {"model": "qwen-image", **options})

    async def edit(
        self,
        prompt: str,
        images: ImageInput | Sequence[ImageInput],
        *,
        timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        inputs = wire.as_image_list(images)
        return await self._run(prompt, inputs, timeout, {"model": wire.edit_model(inputs), **options})

    async def _run(self, prompt: str, images: list[ImageInput], timeout: float | None, options: TaskOptions) -> Result:
        deadline = wire.deadline_of(timeout)
        task = await self.submit(prompt, images=images, wait=wire.server_wait(timeout), **options)
        if not task.done:
            task = await self.wait(task.id, timeout=wire.remaining(deadline))
        return await self.result(task)

    async def submit(
        self, prompt: str, *, images: Sequence[ImageInput] = (), wait: float = 0, **options: Unpack[TaskOptions]
    ) -> Task:
        body = wire.create_body(prompt, images, options, wire.default_model(images))
        headers = {wire.IDEMPOTENCY_HEADER: wire.idempotency_key(options)}
        params = {"wait": wait} if wait else None
        response = await self._call("POST", wire.TASKS, json=body, headers=headers, params=params, waits=wait)
        return wire.task_of(response)

    async def get(self, task_id: str) -> Task:
        return wire.task_of(await self._call("GET", f"{wire.TASKS}/{task_id}"))

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        deadline = wire.deadline_of(timeout)
        for pause in wire.poll_intervals():
            task = await self.get(task_id)
            if task.done:
                return task
            left = wire.remaining(deadline)
            if left == 0:
                raise WaitTimeout(task, timeout or 0)
            await asyncio.sleep(pause if left is None else min(pause, left))
        raise AssertionError("poll_intervals never ends")

    async def cancel(self, task_id: str) -> Task:
        return wire.task_of(await self._call("POST", f"{wire.TASKS}/{task_id}/cancel", replay_safe=False))

    async def result(self, task: Task) -> Result:
        if (error := wire.ended_error(task)) is not None:
            raise error
        contents = await asyncio.gather(*(self.download(ref) for ref in task.results))
        return Result(
            task, [Image(**vars(ref), content=data) for ref, data in zip(task.results, contents, strict=True)]
        )

    async def download(self, image: ImageRef) -> bytes:
        return (await self._call("GET", image.url, authorize=False)).content

    async def stream(self, task_id: str) -> AsyncIterator[Event]:
        decoder = wire.EventDecoder(task_id)
        for reopened in range(self._retry.max_retries + 1):
            decoder.reopened()
            try:
                async with self._events(task_id) as response:
                    async for line in response.aiter_lines():
                        if (event := decoder.feed(line)) is not None:
                            yield event
                            if isinstance(event, Finished):
                                return
            except httpx.TransportError as error:
                if reopened == self._retry.max_retries:
                    raise ConnectionFailed(f"the event stream of {task_id} broke: {error}") from error
        raise ConnectionFailed(f"the event stream of {task_id} ended {self._retry.max_retries + 1} times early")

    @asynccontextmanager
    async def _events(self, task_id: str) -> AsyncIterator[httpx.Response]:
        response = await self._call("GET", f"{wire.TASKS}/{task_id}/events", stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def _call(
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
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                pause = self._retry.after_error(error, attempt, replay_safe=replay_safe)
                if pause is None:
                    raise ConnectionFailed(f"{method} {url}: {error!r}") from error
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                pause = self._retry.after_status(response, attempt)
                if pause is None:
                    raise wire.api_error(response)
            await asyncio.sleep(pause)
        raise AssertionError("the retry policy ends every loop")
