"""The shape of each dialect's callbacks, for the sender (callbacks/sender.py).

Only the APIs whose providers call back have one: native `callback_url`, Novita `extra.webhook.url`,
kie.ai `callBackUrl` and Replicate `webhook`. Every callback also carries the Standard Webhooks
signature headers (Replicate's own scheme).
"""

from __future__ import annotations

from qwen_image_server.api.fal import translate as fal
from qwen_image_server.api.kie import translate as kie
from qwen_image_server.api.native import translate as native
from qwen_image_server.api.novita import translate as novita
from qwen_image_server.api.replicate import translate as replicate
from qwen_image_server.callbacks.sender import CallbackShape
from qwen_image_server.tasks.model import Task

NATIVE_DIALECT = "native"


def _kie_signature(task: Task, key: bytes, timestamp: int) -> dict[str, str]:
    return kie.callback_headers(task.id, key, timestamp)


CALLBACK_SHAPES: dict[str, CallbackShape] = {
    NATIVE_DIALECT: CallbackShape(native.callback_payload),
    novita.DIALECT_NAME: CallbackShape(novita.callback_payload),
    kie.DIALECT_NAME: CallbackShape(kie.callback_payload, extra_headers=_kie_signature),
    fal.DIALECT_NAME: CallbackShape(fal.callback_payload),
    fal.SYNC_MODE_DIALECT: CallbackShape(fal.callback_payload),  # webhooks carry URLs either way
    replicate.DIALECT_NAME: CallbackShape(replicate.callback_payload),
}
