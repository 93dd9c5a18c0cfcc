"""Building blocks for the wire shapes of provider dialects."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class LenientRequest(BaseModel):
    """A request object as providers accept them: unknown fields are ignored, and a JSON null means
    "the default" (clients that serialise every field send nulls for the ones they leave unset)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data


# -- patterns for the OpenAPI spec -----------------------------------------------------------------
# Each admits only what validation accepts (tests/api/test_spec_bounds.py draws strings from them), so
# a request that fits the spec is not refused for the shape of these fields.

# An http(s) URL that `safe_fetch.check_url` and the dialects' `urlsplit` checks all take: a plain
# host name or IPv4 address, an optional port, then any path without spaces or control characters.
# (HTTP_URL_PATTERN, which decides whether a LoRA reference is a URL, is looser: `http://@` fits it.)
HTTP_URL_SPEC_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?"  # host
    r"(?::[0-9]{1,4})?(?:[/?#][^\s\x00-\x1f\x7f]*)?$"  # port, path
)


def int_range_pattern(low: int, high: int) -> str:
    """A regex group that matches the decimal numbers `low`..`high` (0 <= low <= high), leading
    zeros allowed as `int()` reads them: what a size or count inside a text field may be."""
    alternatives: list[str] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10**digits - 1)
        alternatives += _same_length_range(str(first), str(last))
    return "0*(?:" + "|".join(alternatives) + ")"


def _same_length_range(low: str, high: str) -> list[str]:
    if len(low) == 1:
        return [low if low == high else f"[{low}-{high}]"]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [low[0] + tail for tail in _same_length_range(low[1:], high[1:])]
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return [f"[{low[0]}-{high[0]}][0-9]{{{rest}}}"]
    parts = [low[0] + tail for tail in _same_length_range(low[1:], "9" * rest)]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}][0-9]{{{rest}}}")
    return parts + [high[0] + tail for tail in _same_length_range("0" * rest, high[1:])]


def size_text_pattern(low: int, high: int, separators: str = "xX*×", names: tuple[str, ...] = ()) -> str:
    """`W<sep>H` with each side `low`..`high` (spaces around allowed, as the size parsers strip
    them), or one of `names` (presets)."""
    side = int_range_pattern(low, high)
    choices = [rf"{side}\s*[{separators}]\s*{side}", *(re.escape(name) for name in names)]
    return rf"^\s*(?:{'|'.join(choices)})\s*$"


# A prompt with something in it: prompts of only spaces are refused as empty (`GenerationRequest`).
PROMPT_SPEC_PATTERN = r"\S"
# Some base64 as `decode_base64` reads it (whitespace is tolerated there too; the spec need not say so).
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
# An input image reference as `sources.read_remote_image` reads it: an http(s) URL, a data URI of an
# image type or of none/octet-stream (`sources.UNTYPED_MEDIA_TYPES`), or bare base64. That the bytes
# are a picture the spec cannot say: the fuzz run leaves input images out of its accepted-data check.
IMAGE_REF_SPEC_PATTERN = (
    rf"^(?:{HTTP_URL_SPEC_PATTERN[1:-1]}"
    rf"|data:(?:image/[A-Za-z0-9.+-]+|application/octet-stream|binary/octet-stream)?;base64,{_BASE64}"
    rf"|{_BASE64})$"
)


def spec_requires(*names: str) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` that marks `names` required in the spec while the model keeps them
    optional, so that the dialect answers their absence with the provider's own error."""

    def mark(schema: dict[str, Any]) -> None:
        schema["required"] = [
            *schema.get("required", []),
            *(name for name in names if name not in schema.get("required", [])),
        ]

    return mark
