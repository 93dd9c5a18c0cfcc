"""Reading input images from where callers point: a file path, an http(s) URL or a data URI.

Only bytes come back; `images` decides whether they are an acceptable picture (from the content,
never from a Content-Type header). URLs are fetched by `safe_fetch`: http(s) only, a deadline, a
size cap, checked redirects, and no private addresses unless allow-listed. The CLI allow-lists
everything: its user runs it on their own machine, can read its files and reach its network anyway,
and may well keep pictures on a local server; the rules protect a server from its remote callers.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

from qwen_image_server.errors import (
    FetchFailed,
    ImageSourceUnavailable,
    InvalidImage,
    ResponseTooLarge,
    UrlNotAllowed,
)
from qwen_image_server.images import MAX_INPUT_BYTES
from qwen_image_server.safe_fetch import EVERYWHERE, FetchPolicy, IPNetwork, fetch

FETCH_DEADLINE_S = 20.0  # for the whole download: connect, redirects and body
# "Some bytes": what clients write when they cannot name a file's type (replicate-python's
# base64_encode_file for a BytesIO or extensionless file, fal_client.encode_file for an extensionless
# path). It claims nothing, so it is read like a missing type and the content decides.
UNTYPED_MEDIA_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def read_image_source(ref: str, *, index: int = 0) -> bytes:
    """For the CLI: an http(s) URL (any address), a `data:` URI, or a path on this machine."""
    if ref.startswith(("http://", "https://")):
        return fetch_url(ref, index=index, allowed_networks=EVERYWHERE)
    if ref.startswith("data:"):
        return decode_data_uri(ref, index=index)
    return _read_file(Path(ref).expanduser(), index)


def read_remote_image(ref: str, *, index: int = 0, allowed_networks: Sequence[IPNetwork] = ()) -> bytes:
    """For API callers: an http(s) URL (public addresses and `allowed_networks` only), a data URI or
    bare base64 -- never a path on this machine."""
    if ref.startswith(("http://", "https://")):
        return fetch_url(ref, index=index, allowed_networks=allowed_networks)
    if ref.startswith("data:"):
        return decode_data_uri(ref, index=index)
    return decode_base64(ref, index=index)


def _read_file(path: Path, index: int) -> bytes:
    param = f"images[{index}]"
    if not path.is_file():
        raise ImageSourceUnavailable(f"input image {index + 1}: no file at {path}", param=param)
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise InvalidImage(
            f"input image {index + 1}: {path} is larger than {MAX_INPUT_BYTES // 2**20} MiB", param=param
        )
    return path.read_bytes()


def fetch_url(url: str, *, index: int = 0, allowed_networks: Sequence[IPNetwork] = ()) -> bytes:
    """Download input image `index` from `url` (see `safe_fetch`); errors name the image."""
    param = f"images[{index}]"
    policy = FetchPolicy(
        allowed_networks=tuple(allowed_networks), max_bytes=MAX_INPUT_BYTES, deadline_s=FETCH_DEADLINE_S
    )
    try:
        return fetch(url, policy)
    except UrlNotAllowed as exc:
        raise UrlNotAllowed(f"input image {index + 1}: {exc.message}", param=param) from None
    except ResponseTooLarge as exc:
        raise InvalidImage(f"input image {index + 1}: {exc.message}", param=param) from None
    except FetchFailed as exc:
        raise ImageSourceUnavailable(f"input image {index + 1}: {exc.message}", param=param) from None


def decode_data_uri(uri: str, *, index: int = 0) -> bytes:
    """`data:image/png;base64,....` -> bytes. The declared type must be an image type, absent
    (`data:;base64,...`) or octet-stream (`UNTYPED_MEDIA_TYPES`); which image it is comes from the
    content (`images`), not the label."""
    header, _, payload = uri.partition(",")
    param = f"images[{index}]"
    if not header.endswith(";base64") or not payload:
        raise InvalidImage(
            f"input image {index + 1}: a data URI must look like data:image/png;base64,<data>", param=param
        )
    media_type = header.removeprefix("data:").split(";", 1)[0].strip().lower()
    if media_type not in UNTYPED_MEDIA_TYPES and not media_type.startswith("image/"):
        raise InvalidImage(
            f"input image {index + 1}: the data URI declares {media_type}, not an image type "
            "(send data:image/png;base64,<data>, or another image/* type)",
            param=param,
        )
    return decode_base64(payload, index=index)


def decode_base64(payload: str, *, index: int = 0) -> bytes:
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"input image {index + 1} is not valid base64", param=f"images[{index}]") from None
