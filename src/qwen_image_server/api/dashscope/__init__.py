"""The dashscope dialect (not built yet: no routes)."""

from fastapi import APIRouter

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.errors import native_error

DIALECT = Dialect(name="dashscope", prefixes=(), router=lambda _service: APIRouter(), render_error=native_error)
