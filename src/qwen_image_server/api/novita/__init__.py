"""Novita's Qwen-Image API: `/v3/async/qwen-image-txt2img`, `/v3/async/qwen-image-edit` and
`/v3/async/task-result`, with Novita's error body on every `/v3/` path."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.novita.routes import novita_router, render_error
from qwen_image_server.api.novita.schemas import ErrorOut
from qwen_image_server.api.novita.translate import DIALECT_NAME

DIALECT = Dialect(
    name=DIALECT_NAME, prefixes=("/v3/",), router=novita_router, render_error=render_error, error_model=ErrorOut
)
