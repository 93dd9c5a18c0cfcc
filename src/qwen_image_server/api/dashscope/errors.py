"""DashScope's error shape and codes: `{"code", "message", "request_id"}` with DashScope's HTTP statuses.

Routes raise; this module turns any `QwenImageError` raised under the DashScope and Pixazo paths
into DashScope's body. `DashScopeError` carries a DashScope code chosen by the dialect itself
(`AccessDenied` for a missing async header, `UnsupportedOperation` for canceling a running task,
...); every other error is mapped by its class, then its HTTP status.
"""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse, Response

from qwen_image_server.errors import ContentWithheld, QwenImageError, UnknownModel, caller_fault_of
from qwen_image_server.tasks.store import TaskConflict

# DashScope's codes (Alibaba Model Studio's error-code reference).
INVALID_PARAMETER = "InvalidParameter"
EMPTY_INPUT = "BadRequest.EmptyInput"
EMPTY_MODEL = "BadRequest.EmptyModel"
UNSUPPORTED_OPERATION = "UnsupportedOperation"
INVALID_API_KEY = "InvalidApiKey"
ACCESS_DENIED = "AccessDenied"
NOT_FOUND = "NotFound"
MODEL_NOT_FOUND = "ModelNotFound"
REQUEST_TIMEOUT = "RequestTimeOut"
THROTTLING = "Throttling"
DATA_INSPECTION_FAILED = "DataInspectionFailed"  # what DashScope answers for content its checker refuses
INTERNAL_ERROR = "InternalError"
SERVICE_UNAVAILABLE = "ServiceUnavailable"

_BY_STATUS = {
    400: INVALID_PARAMETER,
    401: INVALID_API_KEY,
    403: ACCESS_DENIED,
    404: NOT_FOUND,
    405: UNSUPPORTED_OPERATION,
    408: REQUEST_TIMEOUT,
    413: "RequestTooLarge",
    429: THROTTLING,
    503: SERVICE_UNAVAILABLE,
}
# Our errors that DashScope reports differently from what their HTTP status alone says.
_BY_CLASS: dict[type[QwenImageError], tuple[int, str]] = {
    TaskConflict: (400, UNSUPPORTED_OPERATION),
    UnknownModel: (404, MODEL_NOT_FOUND),
}


class DashScopeError(QwenImageError):
    """An error with a DashScope code picked by the dialect."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.code = code
        self.caller_fault = status < 500


def new_request_id() -> str:
    """Every DashScope response, success or error, carries a fresh one."""
    return str(uuid.uuid4())


def status_and_code(exc: QwenImageError) -> tuple[int, str]:
    """The HTTP status and DashScope code for `exc`."""
    if isinstance(exc, DashScopeError):
        return exc.status, exc.code
    for error_class, answer in _BY_CLASS.items():
        if isinstance(exc, error_class):
            return answer
    if exc.status in _BY_STATUS:
        return exc.status, _BY_STATUS[exc.status]
    return exc.status, INVALID_PARAMETER if exc.caller_fault else INTERNAL_ERROR


def task_error_code(our_code: str) -> str:
    """The DashScope code for a failed task's error (`output.code` of a FAILED task)."""
    if our_code == ContentWithheld.code:
        return DATA_INSPECTION_FAILED
    return INVALID_PARAMETER if caller_fault_of(our_code) else INTERNAL_ERROR


def task_error_status(our_code: str) -> int:
    """The HTTP status the synchronous endpoint answers when its task failed with `our_code`."""
    return 400 if caller_fault_of(our_code) else 500


def render_pixazo_error(exc: QwenImageError) -> Response:
    """Pixazo's gateway answers errors as `{"error": "<message>"}` with DashScope's statuses."""
    status, _code = status_and_code(exc)
    return JSONResponse({"error": exc.message}, status_code=status, headers=exc.headers)


def render_error(exc: QwenImageError) -> Response:
    status, code = status_and_code(exc)
    body = {"code": code, "message": exc.message, "request_id": new_request_id()}
    return JSONResponse(body, status_code=status, headers=exc.headers)
