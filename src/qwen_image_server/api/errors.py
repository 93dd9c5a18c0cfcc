"""Turning exceptions into HTTP error responses in the calling dialect's shape.

Routes raise; they never build error responses. Each dialect registers the path prefix it serves
and a function that renders a `QwenImageError` in its own shape; everything else gets the native
shape `{"error": {"code", "message", "param"}}`. Malformed requests (bad JSON, wrong types) become
400 `invalid_request`, never a 500; an unexpected exception is logged and becomes a 500 that says
no more than that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwen_image_server.errors import InvalidRequest, QwenImageError

log = logging.getLogger(__name__)

ErrorRenderer = Callable[[QwenImageError], Response]


def native_error(exc: QwenImageError) -> Response:
    body = {"error": {"code": exc.code, "message": exc.message, "param": exc.param}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


class HttpError(QwenImageError):
    """A framework-level HTTP error (unknown path, wrong method) carried as our own error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def renderer_by_path(renderers: dict[str, ErrorRenderer]) -> Callable[[str, QwenImageError], Response]:
    """Render an error in the shape of the dialect that owns `path` (native elsewhere)."""

    def render(path: str, exc: QwenImageError) -> Response:
        for prefix, renderer in renderers.items():
            if path.startswith(prefix):
                return renderer(exc)
        return native_error(exc)

    return render


def install_error_handlers(app: FastAPI, renderers: dict[str, ErrorRenderer]) -> None:
    """`renderers` maps a path prefix (e.g. "/api/v1/services/") to its dialect's renderer."""
    by_path = renderer_by_path(renderers)

    def render(request: Request, exc: QwenImageError) -> Response:
        return by_path(request.url.path, exc)

    async def on_ours(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QwenImageError)
        if not exc.is_user_error:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return render(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render(request, invalid_request_from(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return render(request, HttpError(exc.status_code, code, str(exc.detail)))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s crashed", request.method, request.url.path)
        return render(request, QwenImageError("internal server error; the details are in the server log"))

    app.add_exception_handler(QwenImageError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


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
        return InvalidRequest(f"{param} is required", param=param)
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"{param} is not a known parameter", param=param)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)
