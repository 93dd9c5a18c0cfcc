"""Pixwith's task API: `/api/task/create` and `/api/task/get`, with Pixwith's `{code: 0, message}`
envelope on every error under `/api/task/`."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.pixwith.routes import KEY_HEADER, pixwith_router, render_error
from qwen_image_server.api.pixwith.schemas import ErrorOut
from qwen_image_server.api.pixwith.translate import DIALECT_NAME

DIALECT = Dialect(
    name=DIALECT_NAME,
    prefixes=("/api/task/",),
    router=pixwith_router,
    render_error=render_error,
    error_model=ErrorOut,
    key_header=KEY_HEADER,
    key_scheme=None,
)
