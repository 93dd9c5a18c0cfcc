"""Single byte ranges of an in-memory body (RFC 9110 §14), for the result images.

Starlette's `FileResponse` serves ranges of a file on disk, but result images come from the result
store as bytes, whatever store holds them. Only one range is served: several ranges, a range in
other units or a malformed header are ignored and the whole body is sent, as RFC 9110 allows.
"""

from __future__ import annotations

import re

from qwen_image_server.errors import CallerError

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)


class RangeNotSatisfiable(CallerError):
    status = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the requested range starts past the end of the {size} bytes")
        self.headers = {"Content-Range": f"bytes */{size}"}


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) slice the `Range` header asks of a `size`-byte body; None for the whole."""
    match = _SINGLE_RANGE.fullmatch(header.replace(" ", "")) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # a suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(size)
        return max(size - length, 0), size
    start = int(first)
    if last != "" and int(last) < start:  # last-pos before first-pos: invalid, ignored (§14.1.1)
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, size if last == "" else min(int(last) + 1, size)


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end - 1}/{size}"
