from __future__ import annotations

import base64
import io
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_image_server.errors import ImageSourceUnavailable, InvalidImage, UrlNotAllowed
from qwen_image_server.images import MAX_INPUT_BYTES
from qwen_image_server.safe_fetch import IPNetwork
from qwen_image_server.sources import decode_base64, fetch_url, read_image_source, read_remote_image
from tests.conftest import picture_bytes
from tests.unit.local_http import send_body, serving

LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)


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


@pytest.mark.parametrize("media_type", ["text/plain", "application/json", "TEXT/HTML;charset=utf-8"])
def test_a_data_uri_declaring_a_non_image_type_is_refused(media_type: str) -> None:
    uri = f"data:{media_type};base64," + base64.b64encode(picture_bytes()).decode()
    with pytest.raises(InvalidImage, match=f"declares {media_type.split(';')[0].lower()}, not an image") as caught:
        read_remote_image(uri, index=1)
    assert caught.value.param == "images[1]"


@pytest.mark.parametrize(
    "header",
    [
        "data:image/jpeg;base64",
        "data:IMAGE/WEBP;base64",
        "data:;base64",
        # "any bytes": what clients label a file they cannot name, so the content decides as with no type
        "data:application/octet-stream;base64",
        "data:Binary/Octet-Stream;base64",
    ],
)
def test_a_data_uri_with_an_image_type_or_none_is_read(header: str) -> None:
    data = picture_bytes()  # the label need not match the content: the content decides
    assert read_remote_image(f"{header}," + base64.b64encode(data).decode()) == data


def test_replicates_encoder_of_an_unnamed_file_is_read() -> None:
    # replicate-python's base64_encode_file labels a BytesIO (no name) application/octet-stream
    from replicate.helpers import base64_encode_file

    uri = base64_encode_file(io.BytesIO(picture_bytes()))
    assert uri.startswith("data:application/octet-stream;base64,")
    assert read_remote_image(uri) == picture_bytes()


def test_fal_clients_encoder_of_an_extensionless_file_is_read(tmp_path: Path) -> None:
    from fal_client import encode_file

    path = tmp_path / "upload"  # no extension: fal_client cannot guess a type
    path.write_bytes(picture_bytes())
    uri = encode_file(path)
    assert uri.startswith("data:application/octet-stream;base64,")
    assert read_remote_image(uri) == picture_bytes()


def test_base64_tolerates_line_breaks() -> None:
    encoded = base64.encodebytes(b"x" * 200).decode()
    assert "\n" in encoded
    assert decode_base64(encoded) == b"x" * 200


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    routes = {
        "/a.png": lambda handler: send_body(handler, picture_bytes()),
        "/big.png": lambda handler: send_body(handler, b"\0" * (MAX_INPUT_BYTES + 1)),
    }
    with serving(routes) as base:
        yield base


def test_fetches_a_url_from_an_allowed_network(server: str) -> None:
    assert fetch_url(f"{server}/a.png", allowed_networks=LOOPBACK) == picture_bytes()


def test_a_url_that_fails_says_its_status(server: str) -> None:
    with pytest.raises(ImageSourceUnavailable, match="HTTP 404") as caught:
        fetch_url(f"{server}/missing.png", allowed_networks=LOOPBACK)
    assert caught.value.param == "images[0]"


def test_a_url_that_does_not_answer_is_reported() -> None:
    with serving({}) as closed:
        pass  # the port is free again: nothing answers there
    with pytest.raises(ImageSourceUnavailable, match="could not download"):
        fetch_url(f"{closed}/a.png", allowed_networks=LOOPBACK)


def test_an_oversized_download_is_cut_off(server: str) -> None:
    with pytest.raises(InvalidImage, match="larger than 20 MiB"):
        fetch_url(f"{server}/big.png", allowed_networks=LOOPBACK)


def test_api_callers_cannot_reach_private_addresses(server: str) -> None:
    with pytest.raises(UrlNotAllowed, match=r"input image 2: .* a loopback address") as caught:
        read_remote_image(f"{server}/a.png", index=1)
    assert caught.value.param == "images[1]" and caught.value.code == "url_not_allowed"


def test_the_cli_may_fetch_from_this_machine(server: str) -> None:
    # its user runs it locally and can reach this network anyway (see sources' docstring)
    assert read_image_source(f"{server}/a.png") == picture_bytes()
