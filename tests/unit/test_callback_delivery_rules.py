"""The small rules of callback delivery: a URL's destination, and the Retry-After header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from qwen_image_server.callbacks.retry_after import MAX_RETRY_AFTER_SECONDS, retry_after_seconds
from qwen_image_server.tasks.outbox import destination_of

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "destination"),
    [
        ("https://Hooks.Example/a?b=1", "https://hooks.example:443"),
        ("https://hooks.example:443/other", "https://hooks.example:443"),
        ("http://hooks.example/a", "http://hooks.example:80"),
        ("http://hooks.example:8080/a", "http://hooks.example:8080"),
        ("http://[::1]:9000/a", "http://[::1]:9000"),
        ("http://user:pw@hooks.example/a", "http://hooks.example:80"),
    ],
)
def test_the_destination_is_scheme_host_and_port(url: str, destination: str) -> None:
    assert destination_of(url) == destination


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),  # in the past: at once
        ("99999999", MAX_RETRY_AFTER_SECONDS),
        (format_datetime(NOW + timedelta(days=400), usegmt=True), MAX_RETRY_AFTER_SECONDS),
        (None, None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date_and_bounded(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds
