"""Reading input images from where callers point: a file path, an http(s) URL or a data URI.

Only bytes come back; `images` decides whether they are an acceptable picture.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import httpx

from qwen_image_server.errors import ImageSourceUnavailable, InvalidImage
from qwen_image_server.images import MAX_INPUT_BYTES

FETCH_TIMEOUT_S = 20.0


def read_image_source(ref: str, *, index: int = 0) -> bytes:
    """The bytes behind `ref`: an http(s) URL, a `data:` URI, or a path on this machine."""
    if ref.startswith(("http://", "https://")):
        return fetch_url(ref, index=index)
    if ref.startswith("data:"):
        return decode_data_uri(ref, index=index)
    return _read_file(Path(ref).expanduser(), index)


def read_remote_image(ref: str, *, index: int = 0) -> bytes:
    """For API callers: an http(s) URL, a data URI or bare base64 -- never a path on this machine."""
    if ref.startswith(("http://", "https://")):
        return fetch_url(ref, index=index)
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


def fetch_url(url: str, *, index: int = 0, transport: httpx.BaseTransport | None = None) -> bytes:
    """Download `url`, refusing bodies over the input size limit without reading them whole."""
    param = f"images[{index}]"
    try:
        with (
            httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=True, transport=transport) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ImageSourceUnavailable(
                    f"input image {index + 1}: {url} answered HTTP {response.status_code}", param=param
                )
            return _read_limited(response, url, index)
    except httpx.HTTPError as exc:
        raise ImageSourceUnavailable(
            f"input image {index + 1}: could not download {url} ({exc})", param=param
        ) from None


def _read_limited(response: httpx.Response, url: str, index: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > MAX_INPUT_BYTES:
            raise InvalidImage(
                f"input image {index + 1}: {url} is larger than {MAX_INPUT_BYTES // 2**20} MiB",
                param=f"images[{index}]",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def decode_data_uri(uri: str, *, index: int = 0) -> bytes:
    """`data:image/png;base64,....` -> bytes."""
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64") or not payload:
        raise InvalidImage(
            f"input image {index + 1}: a data URI must look like data:image/png;base64,<data>",
            param=f"images[{index}]",
        )
    return decode_base64(payload, index=index)


def decode_base64(payload: str, *, index: int = 0) -> bytes:
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"input image {index + 1} is not valid base64", param=f"images[{index}]") from None
