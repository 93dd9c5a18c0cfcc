"""The DashScope (Alibaba Model Studio) dialect, with Pixazo's endpoint, which wraps DashScope's
synchronous call with the same body and answer. See docs/dashscope.md."""

from fastapi import APIRouter

from qwen_image_server.api.dashscope.errors import render_error, render_pixazo_error
from qwen_image_server.api.dashscope.routes import dashscope_router
from qwen_image_server.api.dashscope.schemas import ErrorOut, PixazoErrorOut
from qwen_image_server.api.dialect import Dialect

DIALECT = Dialect(
    name="dashscope",
    prefixes=("/api/v1/",),  # all of it but kie's /api/v1/jobs/ (the longest prefix wins)
    router=dashscope_router,  # serves Pixazo's path too: same body, same answer
    render_error=render_error,
    error_model=ErrorOut,
)
# Pixazo only differs in its error shape; its route is part of the DashScope router.
PIXAZO = Dialect(
    name="pixazo",
    prefixes=("/qwen-image/v1/",),
    router=lambda _service: APIRouter(),
    render_error=render_pixazo_error,
    error_model=PixazoErrorOut,
    key_header="Ocp-Apim-Subscription-Key",
    key_scheme=None,
)
