"""The Retry-After header of a 429 or 503 answer: how long the receiver asks us to wait.

It is either delay-seconds (`120`) or an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`), RFC 9110
section 10.2.3. A receiver may ask for no more than `MAX_RETRY_AFTER_SECONDS`: beyond that the
wait is cut to it, so a hostile or broken header cannot park a callback for a year.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER_SECONDS = 3600.0


def retry_after_seconds(header: str | None, now: datetime) -> float | None:
    """The wait the header asks for, in seconds from `now` (0 for a date in the past), at most
    `MAX_RETRY_AFTER_SECONDS`; None when there is no header or it is neither form."""
    if header is None:
        return None
    value = header.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_SECONDS)
