"""Downloading a result image at its signed URL: HEAD, byte ranges (resumed and parallel
downloads), If-Range, in the way RFC 9110 describes."""

from __future__ import annotations

import httpx
import pytest

from qwen_image_server.domain import ImageResult, OutputFormat
from qwen_image_server.service import Service
from tests.conftest import picture_bytes

pytestmark = pytest.mark.anyio
IMAGE = picture_bytes()


@pytest.fixture
async def url(api_service: Service) -> str:
    result = ImageResult(data=IMAGE, output_format=OutputFormat.PNG, width=64, height=64, seed=1, index=0)
    stored = await api_service.results.put("task_0123456789abcdef", result)
    return api_service.signer.sign(stored.key).path


async def test_get_offers_ranges(api: httpx.AsyncClient, url: str) -> None:
    response = await api.get(url)
    assert response.status_code == 200 and response.content == IMAGE
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(IMAGE))


async def test_head_gives_the_headers_of_get_and_no_body(api: httpx.AsyncClient, url: str) -> None:
    response = await api.head(url)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(IMAGE))
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"] == (await api.get(url)).headers["etag"]


async def test_head_checks_the_signature_too(api: httpx.AsyncClient, url: str) -> None:
    assert (await api.head(url.replace("sig=", "sig=x"))).status_code == 403


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=10-", 10, len(IMAGE)),
        ("bytes=-5", len(IMAGE) - 5, len(IMAGE)),
        ("bytes=5-999999", 5, len(IMAGE)),  # past the end: up to the end
        ("bytes=-999999", 0, len(IMAGE)),
    ],
)
async def test_a_single_range_is_206(api: httpx.AsyncClient, url: str, header: str, start: int, end: int) -> None:
    response = await api.get(url, headers={"Range": header})
    assert response.status_code == 206
    assert response.content == IMAGE[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(IMAGE)}"
    assert response.headers["content-length"] == str(end - start)


async def test_head_with_a_range(api: httpx.AsyncClient, url: str) -> None:
    response = await api.head(url, headers={"Range": "bytes=0-9"})
    assert response.status_code == 206 and response.content == b""
    assert response.headers["content-length"] == "10"


@pytest.mark.parametrize("header", [f"bytes={len(IMAGE)}-", f"bytes={len(IMAGE) + 10}-{len(IMAGE) + 20}", "bytes=-0"])
async def test_a_range_past_the_end_is_416(api: httpx.AsyncClient, url: str, header: str) -> None:
    response = await api.get(url, headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(IMAGE)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-2", "bytes=-", "nonsense"])
async def test_ranges_not_served_give_the_whole_image(api: httpx.AsyncClient, url: str, header: str) -> None:
    response = await api.get(url, headers={"Range": header})
    assert response.status_code == 200 and response.content == IMAGE


async def test_if_range_with_the_etag_gets_the_range_and_any_other_the_whole(api: httpx.AsyncClient, url: str) -> None:
    etag = (await api.head(url)).headers["etag"]
    same = await api.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == IMAGE[:10]
    other = await api.get(url, headers={"Range": "bytes=0-9", "If-Range": '"another-version"'})
    assert other.status_code == 200 and other.content == IMAGE


@pytest.mark.filterwarnings("error")  # FastAPI warns of a duplicate operation id; the fuzz run breaks on it
async def test_the_spec_documents_head_as_its_own_operation(api: httpx.AsyncClient) -> None:
    operations = (await api.get("/openapi.json")).json()["paths"]["/v1/results/{task_id}/{name}"]
    assert {"get", "head"} <= set(operations)
    assert operations["get"]["operationId"] != operations["head"]["operationId"]
