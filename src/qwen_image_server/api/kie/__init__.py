"""The kie.ai / Apikley jobs API dialect: `/api/v1/jobs/createTask` and `/api/v1/jobs/recordInfo`."""

from qwen_image_server.api.dialect import Dialect
from qwen_image_server.api.kie.routes import PREFIX, kie_router, render_error
from qwen_image_server.api.kie.schemas import ErrorOut
from qwen_image_server.api.kie.translate import DIALECT_NAME

DIALECT = Dialect(
    name=DIALECT_NAME, prefixes=(f"{PREFIX}/",), router=kie_router, render_error=render_error, error_model=ErrorOut
)
