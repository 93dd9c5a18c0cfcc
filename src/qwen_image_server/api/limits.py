"""A size limit on every request body.

The body is read (up to the limit) before the app sees it, so an oversized request is refused
with 413 whatever its Content-Length claims, before any parsing; the refusal is rendered in the
dialect's shape of the request's path. Bodies within the limit are replayed to the app unchanged
(FastAPI reads JSON bodies whole anyway).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_server.errors import QwenImageError

ErrorRender = Callable[[str, QwenImageError], Response]


class PayloadTooLarge(QwenImageError):
    status = 413
    code = "payload_too_large"


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limit: int, render: ErrorRender) -> None:
        self.app = app
        self.limit = limit
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"the request body is larger than {self.limit // 2**20} MiB")
        response = self.render(scope["path"], error)
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
