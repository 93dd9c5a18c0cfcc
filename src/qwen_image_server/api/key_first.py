"""The API key is checked before the request body is read.

FastAPI reads and parses a route's body before the route runs, so a route that checks the key first
thing still lets anyone make the server read (up to `max_request_bytes`) and parse whatever they
send (issue 11: four junk bodies of 95 MiB with a bad key took an API process from 94 MiB to 1.2 GiB,
and were answered 400, not 401). This middleware sits outside the body-size limit and, for requests that carry
a body on a dialect's paths, reads only the headers: a missing or bad key is refused with 401 in
the dialect's shape and `Connection: close`, before one byte of the body is received.

It checks that the key is valid, nothing more; the route checks it again with its scope and rate
limit (`api.dialect.authenticate`), reusing the key found here instead of another database read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from qwen_image_server.api.dialect import VERIFIED_KEY, Unauthorized, presented_key, unauthorized_message
from qwen_image_server.api.errors import log_store_unavailable
from qwen_image_server.errors import QwenImageError, StoreUnavailable
from qwen_image_server.tasks.keys import SqlKeyStore

ErrorRender = Callable[[str, QwenImageError], Response]
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class KeyRule:
    """Where the callers of one path prefix send their key: `Authorization: Bearer k`, `Api-Key: k`..."""

    prefix: str
    header: str
    scheme: str | None = "Bearer"


class KeyBeforeBody:
    def __init__(self, app: ASGIApp, keys: SqlKeyStore, rules: Sequence[KeyRule], render: ErrorRender) -> None:
        self.app = app
        self.keys = keys
        self.rules = sorted(rules, key=lambda rule: len(rule.prefix), reverse=True)  # the longest prefix wins
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self._rule(scope)
        if rule is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers only: the body stays unread
        try:
            refusal = await self._check(request, rule)
        except StoreUnavailable as exc:  # outside the app's error handlers: answer it here
            log_store_unavailable(exc, f"{scope['method']} {scope['path']}")
            refusal = exc
        if refusal is None:
            await self.app(scope, receive, send)
            return
        response = self.render(scope["path"], refusal)
        response.headers["Connection"] = "close"  # the body is not read
        await response(scope, receive, send)

    async def _check(self, request: Request, rule: KeyRule) -> QwenImageError | None:
        """Why the request is refused, or None (then a valid key is left on `request.state`)."""
        if not await self.keys.keys_required():
            return None
        token = presented_key(request, rule.header, rule.scheme)
        key = await self.keys.authenticate(token) if token else None
        if key is None:
            return Unauthorized(unauthorized_message(rule.header, token))
        setattr(request.state, VERIFIED_KEY, (rule.header, token, key))
        return None

    def _rule(self, scope: Scope) -> KeyRule | None:
        if scope["type"] != "http" or scope["method"] not in METHODS_WITH_BODY:
            return None
        path: str = scope["path"]
        return next((rule for rule in self.rules if path.startswith(rule.prefix)), None)
