from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from qwen_image_server.errors import ImageSourceUnavailable, InvalidImage
from qwen_image_server.images import MAX_INPUT_BYTES
from qwen_image_server.sources import decode_base64, fetch_url, read_image_source
from tests.conftest import picture_bytes


def test_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(picture_bytes())
    assert read_image_source(str(path)) == picture_bytes()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageSourceUnavailable, match="no file at"):
        read_image_source(str(tmp_path / "nope.png"))


def test_reads_a_data_uri() -> None:
    data = picture_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert read_image_source(uri) == data


@pytest.mark.parametrize("uri", ["data:image/png,rawbytes", "data:image/png;base64,", "data:image/png;base64,***"])
def test_bad_data_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidImage):
        read_image_source(uri)


def test_base64_tolerates_line_breaks() -> None:
    encoded = base64.encodebytes(b"x" * 200).decode()
    assert "\n" in encoded
    assert decode_base64(encoded) == b"x" * 200


def test_fetches_a_url() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=picture_bytes()))
    assert fetch_url("https://images.example/a.png", transport=transport) == picture_bytes()


def test_a_url_that_fails_says_its_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404))
    with pytest.raises(ImageSourceUnavailable, match="HTTP 404"):
        fetch_url("https://images.example/a.png", transport=transport)


def test_a_url_that_does_not_answer_is_reported() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ImageSourceUnavailable, match="could not download"):
        fetch_url("https://images.example/a.png", transport=httpx.MockTransport(refuse))


def test_an_oversized_download_is_cut_off() -> None:
    body = b"\0" * (MAX_INPUT_BYTES + 1)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    with pytest.raises(InvalidImage, match="larger than"):
        fetch_url("https://images.example/a.png", transport=transport)
