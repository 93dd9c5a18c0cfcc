"""Limits on every request body: its size, and how deeply a JSON body nests.

The body is read (up to the size limit) before the app sees it, so an oversized request is refused
with 413 whatever its Content-Length claims, before any parsing; the refusal is rendered in the
dialect's shape of the request's path. Bodies within the limit are replayed to the app unchanged
(FastAPI reads JSON bodies whole anyway).

Python's JSON parser recurses once per level of nesting, so a body of a thousand `[` raises
RecursionError wherever it is parsed (FastAPI's body parsing, a route's own `json.loads`). A JSON
body nested deeper than any request here needs is refused with 400 before any parser sees it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_server.errors import CallerError, InvalidRequest, QwenImageError

ErrorRender = Callable[[str, QwenImageError], Response]

MAX_JSON_DEPTH = 64  # the deepest request of any dialect nests 4 levels


class PayloadTooLarge(CallerError):
    status = 413
    code = "payload_too_large"


class BodyLimits:
    """The size limit, then (for a body that may be JSON) the nesting limit, on one read of the body."""

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
        body = b"".join(chunks)
        if _may_be_json(scope) and nests_deeper_than(body, MAX_JSON_DEPTH):
            too_deep = f"the request body is not valid JSON here: it nests more than {MAX_JSON_DEPTH} levels deep"
            await self.render(scope["path"], InvalidRequest(too_deep))(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

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


def _may_be_json(scope: Scope) -> bool:
    """Bodies with no Content-Type count as JSON: FastAPI parses them as JSON."""
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").lower()
    return not content_type or b"json" in content_type


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # brackets inside strings do not nest
_ALL_BUT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_OPENERS = frozenset(b"[{")


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text `body` nests arrays and objects more than `limit` deep. Not a
    validator: for text that is not JSON it may say either, and the parser then refuses it."""
    if body.count(b"[") + body.count(b"{") <= limit:  # most bodies (base64 images have none): no scan
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _ALL_BUT_BRACKETS)  # both run at C speed
    depth = 0
    for byte in brackets:
        depth += 1 if byte in _OPENERS else -1
        if depth > limit:
            return True
        if depth < 0:  # unbalanced: not JSON, which the parser says better
            return False
    return False
