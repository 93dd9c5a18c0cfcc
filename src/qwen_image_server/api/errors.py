"""Turning exceptions into HTTP error responses in the calling dialect's shape.

Routes raise; they never build error responses. Each dialect registers the path prefix it serves
and a function that renders a `QwenImageError` in its own shape; everything else gets the native
shape `{"error": {"code", "message", "param"}}`. Malformed requests (bad JSON, wrong types) become
400 `invalid_request`, never a 500; a task database that cannot take the call now (the stores raise
`StoreUnavailable`: down, restarting, busy past its lock timeout, full) is a 503
`database_unavailable` with Retry-After, logged in one line; an unexpected exception is logged and
becomes a 500 that says no more than that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from qwen_image_server.errors import InvalidParameter, InvalidRequest, QwenImageError, StoreUnavailable

log = logging.getLogger(__name__)

ErrorRenderer = Callable[[QwenImageError], Response]


def native_error(exc: QwenImageError) -> Response:
    body = {"error": {"code": exc.code, "message": exc.message, "param": exc.param}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


class HttpError(QwenImageError):
    """A framework-level HTTP error (unknown path, wrong method) carried as our own error."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.caller_fault = status < 500  # unknown paths, wrong methods, too large: the caller's
        self.headers = dict(headers) if headers else None  # e.g. the Allow of a 405 (RFC 9110)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def renderer_by_path(renderers: dict[str, ErrorRenderer]) -> Callable[[str, QwenImageError], Response]:
    """Render an error in the shape of the dialect that owns `path` (native elsewhere). Prefixes may
    nest (kie owns /api/v1/jobs/, DashScope the rest of /api/v1/): the longest one that matches wins."""
    longest_first = sorted(renderers, key=len, reverse=True)

    def render(path: str, exc: QwenImageError) -> Response:
        for prefix in longest_first:
            if path.startswith(prefix):
                return renderers[prefix](exc)
        return native_error(exc)

    return render


def install_error_handlers(app: FastAPI, renderers: dict[str, ErrorRenderer]) -> None:
    """`renderers` maps a path prefix (e.g. "/api/v1/services/") to its dialect's renderer."""
    by_path = renderer_by_path(renderers)

    def render(request: Request, exc: QwenImageError) -> Response:
        return by_path(request.url.path, exc)

    async def on_ours(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QwenImageError)
        if not exc.caller_fault:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return render(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render(request, invalid_request_from(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = {"Allow": allowed_methods(request)} if exc.status_code == 405 else exc.headers
        return render(request, HttpError(exc.status_code, code, str(exc.detail), headers))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s crashed", request.method, request.url.path)
        return render(request, QwenImageError("internal server error; the details are in the server log"))

    async def on_store_unavailable(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreUnavailable)
        log_store_unavailable(exc, f"{request.method} {request.url.path}")
        return render(request, exc)

    app.add_exception_handler(QwenImageError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(StoreUnavailable, on_store_unavailable)  # the most specific class wins
    app.add_exception_handler(Exception, on_unexpected)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def log_store_unavailable(exc: StoreUnavailable, doing: str) -> None:
    """One line per refused request (an outage is expected now and then: no traceback)."""
    log.warning("%s: the task database is %s: %s", doing, exc.trouble, exc.detail)


def allowed_methods(request: Request) -> str:
    """Every method served at the request's path. Starlette's 405 names only the methods of the
    first route that matched the path (GET and POST /v1/tasks are two routes), and FastAPI nests
    the routes of included routers, so each method is tried against the whole routing table
    through its public `matches` rather than by reading the routes' own method sets."""
    routes = request.app.router.routes
    served = (method for method in _METHODS if _served(routes, {**request.scope, "method": method}))
    return ", ".join(served)


def _served(routes: list[BaseRoute], scope: dict[str, Any]) -> bool:
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def invalid_request_from(errors: Any) -> InvalidRequest:
    """The first of FastAPI's validation errors as one readable sentence naming the field."""
    first = next(iter(errors), None) or {"loc": (), "msg": "invalid request", "type": ""}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "header")]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return InvalidRequest("the request body is not valid JSON", param=None)
    if first.get("type") in ("model_attributes_type", "dict_type") and param is None:
        return InvalidRequest("send the request body as a JSON object (Content-Type: application/json)")
    if first.get("type") == "missing":
        if param is None:  # the body itself
            return InvalidRequest("a JSON request body is required (Content-Type: application/json)")
        return InvalidRequest(f"{param} is required", param=param)
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"{param} is not a known parameter", param=param)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None:
        return InvalidRequest(message)
    if first.get("type") in _OUT_OF_BOUNDS:  # the same error the domain's own checks give for it
        return InvalidParameter(f"{param}: {message}", param=param)
    return InvalidRequest(f"{param}: {message}", param=param)


# Validation errors of a value of the right type outside what the field allows (its bounds are the
# domain's, declared on the wire model so that the OpenAPI spec shows them).
_OUT_OF_BOUNDS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "too_long",
        "too_short",
        "string_too_long",
        "string_too_short",
        "string_pattern_mismatch",
        "enum",
        "literal_error",
    }
)
