"""Every HTTP request counted and timed, by dialect, method, route template and status: a pure ASGI
middleware (BaseHTTPMiddleware would cost a task and a queue per request).

Per request it does what it must and no more: one closure to see the status, a clock read at each
end, and a dict lookup that finds the request's counter and histogram children (made once per label
set, so `labels()` with its lock is not called per request). The route is the template the router
matched (`/v1/tasks/{task_id}`, not the id), so the label sets are bounded; a path no route matches
is counted as `unmatched`, and methods outside HTTP's own as `OTHER`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_server.metrics.recorded import HTTP_LATENCY, HTTP_REQUESTS

UNMATCHED = "unmatched"
NO_DIALECT = "none"  # routes of no dialect: /healthz, /readyz, /metrics, result images
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_Children = tuple[Any, Any]  # the counter's and the histogram's children for one label set


class RequestMetrics:
    def __init__(self, app: ASGIApp, dialect_prefixes: Sequence[tuple[str, str]]) -> None:
        """`dialect_prefixes`: (path prefix, dialect name) pairs; the longest matching prefix wins."""
        self.app = app
        self._prefixes = sorted(dialect_prefixes, key=lambda pair: len(pair[0]), reverse=True)
        self._children: dict[tuple[str, str, str, int], _Children] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before it answers, the server answers 500

        async def send_seeing_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seeing_status)
        finally:
            counter, histogram = self._for(scope, status)
            counter.inc()
            histogram.observe(time.perf_counter() - started)

    def _for(self, scope: Scope, status: int) -> _Children:
        route = scope.get("route")  # the router leaves the route it matched in the scope
        template: str | None = getattr(route, "path", None)
        method: str = scope["method"] if scope["method"] in _METHODS else "OTHER"
        # A matched route's template tells its dialect; an unmatched path's prefix does (rare: 404s).
        dialect = "" if template is not None else self._dialect(scope["path"])
        key = (template or UNMATCHED, dialect, method, status)
        children = self._children.get(key)
        if children is None:
            dialect = dialect or self._dialect(key[0])
            labels = (dialect, method, key[0])
            children = HTTP_REQUESTS.labels(*labels, str(status)), HTTP_LATENCY.labels(*labels)
            self._children[key] = children
        return children

    def _dialect(self, path: str) -> str:
        return next((name for prefix, name in self._prefixes if path.startswith(prefix)), NO_DIALECT)
