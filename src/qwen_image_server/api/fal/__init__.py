"""fal's queue API for the Qwen-Image apps (`/fal-ai/...`) and its synchronous run host
(`/run/fal-ai/...`), with fal's `{detail}` errors on both. See docs/fal.md."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.fal.routes import KEY_HEADER, KEY_SCHEME, QUEUE_PREFIX, RUN_PREFIX, fal_router, render_error
from qwen_image_server.api.fal.schemas import ErrorOut
from qwen_image_server.api.fal.translate import DIALECT_NAME

DIALECT = Dialect(
    name=DIALECT_NAME,
    prefixes=(f"{QUEUE_PREFIX}/", f"{RUN_PREFIX}/"),
    router=fal_router,
    render_error=render_error,
    error_model=ErrorOut,
    key_header=KEY_HEADER,
    key_scheme=KEY_SCHEME,
)
