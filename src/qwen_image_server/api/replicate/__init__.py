"""Replicate's predictions API for qwen/qwen-image, qwen/qwen-image-edit and qwen/qwen-image-edit-plus:
`/v1/predictions`, `/v1/models/qwen/{name}/...` and `/v1/webhooks/default/secret`, with Replicate's
RFC 7807 errors on those paths. See docs/replicate.md."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.replicate.routes import MODELS, PREDICTIONS, render_error, replicate_router
from qwen_image_server.api.replicate.schemas import ErrorOut
from qwen_image_server.api.replicate.translate import DIALECT_NAME

DIALECT = Dialect(
    name=DIALECT_NAME,
    # /v1/models/qwen/ is longer than OpenAI's /v1/models/ (whose ids have no slash): the longest wins.
    prefixes=(PREDICTIONS, f"{MODELS}/", "/v1/webhooks/"),
    router=replicate_router,
    render_error=render_error,
    error_model=ErrorOut,
)
