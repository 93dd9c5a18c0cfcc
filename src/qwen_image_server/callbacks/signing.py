"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A secret reads `whsec_<base64 of the key bytes>`. Each delivery carries `webhook-id` (the same on
every retry, for the receiver to drop duplicates), `webhook-timestamp` (Unix seconds of this
attempt, against replays) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
Any Standard Webhooks library verifies them, e.g. Python's `standardwebhooks.Webhook(secret).verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_FILE = "webhook-secret"  # in the data dir, when the setting `webhook_secret` is not set
SECRET_BYTES = 24


def new_webhook_secret() -> str:
    return as_webhook_secret(secrets.token_bytes(SECRET_BYTES))


def as_webhook_secret(key: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_...` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes of key")
    return key


def signature_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery of `body`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }
