"""The exception tree. Every error we raise on purpose is a `QwenImageError`.

Each class knows its HTTP status, a stable machine code and whether it is the caller's fault
(`CallerError` and its subclasses: bad input, an option not offered, an input URL that cannot be
read...); the CLI prints the message as one line, and each API dialect renders the same exception
in its own error shape, choosing its provider's code by class. Raise, don't return.

A failed task keeps only the code of the error that failed it; `caller_fault_of(code)` asks the
class that raises that code, so no dialect guesses from the spelling of a code or message.
"""

from __future__ import annotations

from typing import ClassVar


class QwenImageError(Exception):
    """Base class. `message` is written for a person: what is wrong and what to do about it."""

    status: int = 500
    code: str = "internal_error"
    caller_fault: bool = False  # the caller can fix it (always a 4xx status); see `CallerError`
    headers: dict[str, str] | None = None  # extra response headers (e.g. Retry-After), any dialect

    _by_code: ClassVar[dict[str, type[QwenImageError]]] = {}

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:  # the class that names a code answers for it
            QwenImageError._by_code[cls.code] = cls


class CallerError(QwenImageError):
    """The caller's fault, which the caller can fix: bad input, an unsupported option, a URL that
    cannot be read, a missing key, an unknown task. Always a 4xx; dialects report it as their
    provider reports bad requests, also when it fails a task after the request was accepted."""

    status = 400
    caller_fault = True


def caller_fault_of(code: str) -> bool:
    """Whether an error known only by its code (a failed task's `error.code`) was the caller's fault:
    as the class that raises `code` says. A code no class names (a crash) is the server's fault."""
    error_class = QwenImageError._by_code.get(code)
    return error_class is not None and error_class.caller_fault


class InvalidRequest(CallerError):
    code = "invalid_request"


class InvalidParameter(InvalidRequest):
    code = "invalid_parameter"


class InvalidImage(InvalidParameter):
    code = "invalid_image"


class PromptTooLong(InvalidParameter):
    code = "prompt_too_long"


class ContentWithheld(CallerError):
    """The safety checker kept back every image of a task: there is nothing to deliver. The worker
    fails the task with this code; the providers report it as a refusal of the request."""

    code = "content_withheld"


class IdempotencyKeyReused(InvalidRequest):
    """The same Idempotency-Key came with a different request."""

    status = 422
    code = "idempotency_key_reused"


class ImageSourceUnavailable(InvalidRequest):
    """An input image named by path or URL could not be read."""

    code = "image_unavailable"


class LoraUnavailable(InvalidRequest):
    """A request's LoRA adapter could not be used: its URL could not be downloaded, it is not a
    safetensors file, or it does not fit the model."""

    code = "lora_unavailable"


class UrlNotAllowed(InvalidRequest):
    """A user-supplied URL this server will not fetch: not http(s), or it leads to a non-public address."""

    code = "url_not_allowed"


class FetchFailed(QwenImageError):
    """A user-supplied URL could not be fetched: no answer, an HTTP error, too slow, too many redirects.
    Callers say what the URL was for (an input image, a callback) and re-raise as their own error."""

    status = 502
    code = "fetch_failed"


class ResponseTooLarge(FetchFailed):
    code = "response_too_large"


class RetryLater(QwenImageError):
    """A refusal the caller should retry after `retry_after` seconds (sent as Retry-After)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(retry_after, 1))}


class RateLimited(RetryLater, CallerError):
    """Too many tasks for this key."""

    status = 429
    code = "rate_limited"


class QueueFull(RetryLater):
    """The queue is at its configured depth."""

    status = 503
    code = "queue_full"


class StorageUnavailable(RetryLater):
    """The results storage cannot take or give images now (disk full, read-only, I/O error)."""

    status = 503
    code = "storage_unavailable"


class StoreUnavailable(RetryLater):
    """The task database cannot take the call now: unreachable (down, restarting, network trouble),
    busy past its lock timeout, or out of space. The stores raise it (tasks/database.py translates
    the drivers' errors); the same call may succeed later, so the API answers 503 with Retry-After
    and workers and senders wait. `trouble` says which in a few words, `detail` is the driver's own
    line, for the log."""

    status = 503
    code = "database_unavailable"  # the code clients have seen since before the stores raised it

    def __init__(self, trouble: str, detail: str, *, retry_after: int) -> None:
        super().__init__(f"the task database is {trouble} right now; try again shortly", retry_after=retry_after)
        self.trouble = trouble
        self.detail = detail


class UnknownModel(CallerError):
    status = 404
    code = "model_not_found"


class CheckpointUnavailable(QwenImageError):
    """The weights for a model could not be loaded (missing folder, no hub access, bad files)."""

    status = 503
    code = "model_unavailable"


class EngineSetupError(QwenImageError):
    """The engine cannot start as configured: a speed setting this machine cannot honour (an attention
    backend or package missing, a GPU too old, no compiler) or a warm-up that failed. Raised when the
    engine starts, so a deployment fails at once instead of at its first request."""

    status = 503
    code = "engine_unavailable"


class GenerationCanceled(CallerError):
    status = 409
    code = "canceled"


class GenerationFailed(QwenImageError):
    status = 500
    code = "generation_failed"


class ProvenanceFailed(QwenImageError):
    """An image could not be given its C2PA manifest: the signing certificate or key is unreadable,
    of an unsupported kind or not a pair, or the C2PA library refused. The server's configuration is
    at fault, never the request, so it is a 500."""

    status = 500
    code = "provenance_failed"


class SafetyCheckFailed(QwenImageError):
    """The safety checker could not score generated images (out of memory, a device error, a picture
    its processor cannot read). Raised apart from `GenerationFailed` so that the caller chooses: fail
    closed (withhold the images) or fail open (deliver them marked unchecked). The server's checker is
    at fault, never the request, so it is a 500."""

    status = 500
    code = "safety_check_failed"
