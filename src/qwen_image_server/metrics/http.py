"""Every HTTP request counted and timed, by dialect, method, route template and status: a pure ASGI
middleware (BaseHTTPMiddleware would cost a task and a queue per request).

Per request it does what it must and no more: one closure to see the status, a clock read at each
end, and a dict lookup that finds the request's counter and histogram children (made once per label
set, so `labels()` with its lock is not called per request). The route is the template the router
matched (`/v1/tasks/{task_id}`, not the id), so the label sets are bounded. A request answered
before the router ran (a refused key, a body too large) is matched against the routes here, so it
counts under its route too; a path no route matches counts as `unmatched`, and methods outside
HTTP's own as `OTHER`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_server.metrics.recorded import HTTP_LATENCY, HTTP_REQUESTS

UNMATCHED = "unmatched"
CLIENT_GONE = 499
NO_DIALECT = "none"  # routes of no dialect: /healthz, /readyz, /metrics, result images
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_Children = tuple[Any, Any]  # the counter's and the histogram's children for one label set


class RequestMetrics:
    def __init__(self, app: ASGIApp, dialect_prefixes: Sequence[tuple[str, str]], routes: Sequence[BaseRoute]) -> None:
        """`dialect_prefixes`: (path prefix, dialect name) pairs, the longest matching prefix wins;
        `routes`: the app's (the router's own list: routes included later are in it too)."""
        self.app = app
        self._app_routes = routes
        self._routes: list[BaseRoute] | None = None  # flattened at the first request the router did not see
        self._prefixes = sorted(dialect_prefixes, key=lambda pair: len(pair[0]), reverse=True)
        self._children: dict[tuple[str, str, str, int], _Children] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_seeing_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seeing_status)
        except BaseException:
            status = status or 500  # raised before answering: the server answers 500
            raise
        finally:
            # No answer and no error: the client went away first (nginx's 499).
            counter, histogram = self._for(scope, status or CLIENT_GONE)
            counter.inc()
            histogram.observe(time.perf_counter() - started)

    def _for(self, scope: Scope, status: int) -> _Children:
        # The router leaves the route it matched in the scope; a request it never saw is matched here.
        template: str | None = getattr(scope.get("route"), "path", None) or self._template(scope)
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

    def _template(self, scope: Scope) -> str | None:
        if self._routes is None:
            self._routes = list(_flattened(self._app_routes))
        partial = None
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", None)
            if match is Match.PARTIAL and partial is None:
                partial = getattr(route, "path", None)
        return partial

    def _dialect(self, path: str) -> str:
        return next((name for prefix, name in self._prefixes if path.startswith(prefix)), NO_DIALECT)


def _flattened(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, with those of included routers in their place (FastAPI 0.16x keeps an included
    router as one entry holding its `original_router`; earlier releases copied its routes in)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flattened(included.routes)
        else:
            yield route
