"""A Python client of qwen-image-server's native API (docs/client.md).

    from qwen_image_server.client import Client

    with Client() as client:
        result = client.generate("a red fox in snow", size="1024x1024", seed=7)
        result.images[0].save("fox.png")

It imports only the standard library and httpx (no torch, no server code), so applications can use it
without the server's dependencies being loaded.
"""

from qwen_image_server.client.aio import AsyncClient
from qwen_image_server.client.errors import (
    APIError,
    AuthenticationError,
    ConnectionFailed,
    NotFound,
    Overloaded,
    QwenImageClientError,
    TaskCanceled,
    TaskFailed,
    WaitTimeout,
)
from qwen_image_server.client.sync import Client
from qwen_image_server.client.types import (
    Event,
    Finished,
    Image,
    ImageNote,
    ImageRef,
    Preview,
    Progress,
    Queued,
    Report,
    Result,
    Running,
    Task,
    TaskError,
)
from qwen_image_server.client.wire import TaskOptions

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectionFailed",
    "Event",
    "Finished",
    "Image",
    "ImageNote",
    "ImageRef",
    "NotFound",
    "Overloaded",
    "Preview",
    "Progress",
    "Queued",
    "QwenImageClientError",
    "Report",
    "Result",
    "Running",
    "Task",
    "TaskCanceled",
    "TaskError",
    "TaskFailed",
    "TaskOptions",
    "WaitTimeout",
]
