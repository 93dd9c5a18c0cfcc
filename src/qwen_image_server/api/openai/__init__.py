"""The OpenAI Images API dialect: /v1/images/generations and /v1/images/edits. It also owns the
error shape of /v1/models/{id} (`models.retrieve`, served with the list in api/common.py)."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.openai.routes import openai_router
from qwen_image_server.api.openai.schemas import OpenAIErrorBody
from qwen_image_server.api.openai.translate import openai_error

DIALECT = Dialect(
    name="openai",
    prefixes=("/v1/images/", "/v1/models/"),
    router=openai_router,
    render_error=openai_error,
    error_model=OpenAIErrorBody,
)
