"""The OpenAI Images API dialect: /v1/images/generations and /v1/images/edits."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.openai.routes import openai_router
from qwen_image_server.api.openai.schemas import OpenAIErrorBody
from qwen_image_server.api.openai.translate import openai_error

DIALECT = Dialect(
    name="openai",
    prefixes=("/v1/images/",),
    router=openai_router,
    render_error=openai_error,
    error_model=OpenAIErrorBody,
)
