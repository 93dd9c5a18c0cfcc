"""Standard Webhooks signatures, checked with the reference `standardwebhooks` verifier."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from qwen_image_server.callbacks.signing import new_webhook_secret, secret_key, signature_headers
from qwen_image_server.settings import Settings

Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
BODY = b'{"type":"task.succeeded","data":{"id":"t1"}}'


def test_a_signature_verifies_with_the_reference_library() -> None:
    secret = new_webhook_secret()
    headers = signature_headers(secret, "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers) == {"type": "task.succeeded", "data": {"id": "t1"}}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda headers, body: (headers, body.replace(b"t1", b"t2")),
        lambda headers, body: ({**headers, "webhook-id": "msg_2"}, body),
        lambda headers, body: ({**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}, body),
    ],
    ids=["body", "id", "timestamp"],
)
def test_any_change_breaks_the_signature(tamper: Tamper) -> None:
    secret = new_webhook_secret()
    headers, body = tamper(signature_headers(secret, "msg_1", int(time.time()), BODY), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_an_old_timestamp_is_refused_by_the_verifier() -> None:
    secret = new_webhook_secret()
    headers = signature_headers(secret, "msg_1", int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_secrets_are_whsec_base64_and_distinct() -> None:
    first, second = new_webhook_secret(), new_webhook_secret()
    assert first.startswith("whsec_") and first != second
    assert len(secret_key(first)) == 24


@pytest.mark.parametrize("bad", ["plain-text-secret", "whsec_not*base64", "whsec_c2hvcnQ="])
def test_a_malformed_webhook_secret_setting_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="webhook_secret"):
        Settings(webhook_secret=bad)
