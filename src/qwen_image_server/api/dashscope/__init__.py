"""The DashScope (Alibaba Model Studio) dialect, with Pixazo's endpoint, which wraps DashScope's
synchronous call with the same body and answer. See docs/dashscope.md."""

from qwen_image_server.api.dashscope.errors import render_error
from qwen_image_server.api.dashscope.routes import dashscope_router
from qwen_image_server.api.dialect import Dialect

DIALECT = Dialect(
    name="dashscope",
    prefixes=("/api/v1/services/", "/api/v1/tasks/", "/qwen-image/v1/"),
    router=dashscope_router,
    render_error=render_error,
)
