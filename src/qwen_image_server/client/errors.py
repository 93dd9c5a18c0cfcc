"""The client's exceptions: one base class, so that `except QwenImageClientError` catches them all.

An answer with an error status carries the server's native error body (`{"error": {"code", "message",
"param"}}`); a task that ended without images carries the task and its `error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_image_server.client.types import Task


class QwenImageClientError(Exception):
    """Anything the client could not do. `status` is the HTTP status (None when the server gave no
    answer), `code` the server's machine code (or the client's own: `connection_failed`, ...)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "client_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class APIError(QwenImageClientError):
    """The server answered with an error status. `param` names the offending request field when the
    server said which; `retry_after` is its `Retry-After` in seconds, when sent."""

    def __init__(
        self, message: str, *, status: int, code: str, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.param = param
        self.retry_after = retry_after


class AuthenticationError(APIError):
    """401 (missing, unknown or revoked key) or 403 (the key lacks the scope)."""


class NotFound(APIError):
    """404: no such task (or another key's task)."""


class Overloaded(APIError):
    """429 or 503 still refused after the client's retries: rate limits, a full queue, a database
    that is restarting. `retry_after` says when to try again."""


class ConnectionFailed(QwenImageClientError):
    """No answer from the server (refused, reset, timed out) after the client's retries."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="connection_failed")


class TaskFailed(QwenImageClientError):
    """The task ended `failed`: `code` and `message` are the task's `error`, `task` the whole task."""

    def __init__(self, task: Task) -> None:
        code, message = (task.error.code, task.error.message) if task.error else (task.status, f"task {task.status}")
        super().__init__(f"task {task.id} {task.status}: {message}", code=code)
        self.task = task


class TaskCanceled(TaskFailed):
    """The task ended `canceled` (by `cancel()`, another client, or the server giving up on it)."""


class WaitTimeout(QwenImageClientError, TimeoutError):
    """The task did not end within the time given; `task` is its last state seen (it goes on running)."""

    def __init__(self, task: Task, seconds: float) -> None:
        super().__init__(f"task {task.id} still {task.status} after {seconds:g} seconds", code="wait_timeout")
        self.task = task
