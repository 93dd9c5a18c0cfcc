"""The ASGI application: every router on one `Service`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from qwen_image_server import __version__
from qwen_image_server.api.common import common_router
from qwen_image_server.api.cors import allow_cross_origin
from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.errors import install_error_handlers, renderer_by_path
from qwen_image_server.api.key_first import KeyBeforeBody, KeyRule
from qwen_image_server.api.limits import BodyLimits
from qwen_image_server.api.metrics import metrics_router
from qwen_image_server.api.native.routes import NATIVE_PREFIX, native_router
from qwen_image_server.api.playground import playground_router
from qwen_image_server.api.spec import document_errors
from qwen_image_server.metrics.http import RequestMetrics
from qwen_image_server.service import Service


def create_app(service: Service, *, manage_service: bool = True) -> FastAPI:
    """The app for `service`. With `manage_service`, the app's lifespan starts and stops it (as
    `serve` does); tests that drive the app in-process start the service themselves."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            await service.start()
        try:
            yield
        finally:
            if manage_service:
                await service.stop()

    app = FastAPI(
        title="qwen-image-server",
        version=__version__,
        summary="Qwen-Image text-to-image and editing as a service.",
        lifespan=lifespan,
    )
    dialects = all_dialects()
    renderers = {prefix: d.render_error for d in dialects for prefix in d.prefixes}
    install_error_handlers(app, renderers)
    document_errors(app, {prefix: d.error_model for d in dialects for prefix in d.prefixes})
    # Each middleware added wraps the ones before it. From the outside in: CORS (preflights carry no
    # key, and refusals need its headers too), the key (checked before any of the body is read), the
    # body's size and JSON nesting limits (they read it).
    by_path = renderer_by_path(renderers)
    app.add_middleware(BodyLimits, limit=service.settings.max_request_bytes, render=by_path)
    app.add_middleware(KeyBeforeBody, keys=service.keys, rules=key_rules(dialects), render=by_path)
    allow_cross_origin(app, service.settings.cors_allowed_origins)
    if service.settings.metrics:  # outermost: it times and counts every answer, refusals too
        app.add_middleware(RequestMetrics, dialect_prefixes=dialect_prefixes(dialects), routes=app.router.routes)
        app.include_router(metrics_router(service))
    app.include_router(common_router(service))
    app.include_router(native_router(service))
    for dialect in dialects:
        app.include_router(dialect.router(service))
    app.include_router(playground_router())  # the page at `/` that drives the native API
    return app


def key_rules(dialects: list[Dialect]) -> list[KeyRule]:
    """Where the callers of each path send their key: each dialect's header, and the native API's."""
    native = KeyRule(NATIVE_PREFIX, "Authorization")
    return [native, *(KeyRule(p, d.key_header, d.key_scheme) for d in dialects for p in d.prefixes)]


def dialect_prefixes(dialects: list[Dialect]) -> list[tuple[str, str]]:
    """The path prefixes of each dialect's requests, with its name (the native API's too)."""
    return [(NATIVE_PREFIX, "native"), *((prefix, d.name) for d in dialects for prefix in d.prefixes)]


def all_dialects() -> list[Dialect]:
    """The provider dialects, each in its own package."""
    from qwen_image_server.api import dashscope, fal, kie, novita, openai, pixwith, replicate

    return [
        openai.DIALECT,
        dashscope.DIALECT,
        dashscope.PIXAZO,
        novita.DIALECT,
        kie.DIALECT,
        pixwith.DIALECT,
        fal.DIALECT,
        replicate.DIALECT,
    ]
