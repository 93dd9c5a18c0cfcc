"""The adapter download cache: a real HTTP server on loopback, the safe fetcher, files on disk."""

from __future__ import annotations

import ipaddress
import json
import os
import pickle
import struct
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from qwen_image_server.engine.lora_downloads import LoraDownloads
from qwen_image_server.errors import LoraUnavailable, UrlNotAllowed
from tests.unit.local_http import send_body, serving

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def safetensors_bytes(payload: bytes = b"\0" * 64, name: str = "transformer.x.lora_A.weight") -> bytes:
    """A minimal well-formed safetensors file: one uint8 tensor holding `payload`."""
    header = json.dumps({name: {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}})
    return struct.pack("<Q", len(header)) + header.encode() + payload


FILES = {
    "/a.safetensors": safetensors_bytes(b"a" * 64),
    "/same-as-a.safetensors": safetensors_bytes(b"a" * 64),
    "/b.safetensors": safetensors_bytes(b"b" * 64),
    "/c.safetensors": safetensors_bytes(b"c" * 64),
    "/pickle.bin": pickle.dumps({"weights": [1, 2, 3]}),
    "/huge.safetensors": safetensors_bytes(b"h" * 4096),
    "/lying-header.safetensors": struct.pack("<Q", 10**9) + b"{}",
}
hits: dict[str, int] = {}


def _route(path: str):  # type: ignore[no-untyped-def]
    def route(handler: BaseHTTPRequestHandler) -> None:
        hits[path] = hits.get(path, 0) + 1
        send_body(handler, FILES[path], content_type="application/octet-stream")

    return route


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving({path: _route(path) for path in FILES}) as base:
        yield base


def downloads(folder: Path, **limits: int) -> LoraDownloads:
    settings = {"max_bytes": 1024, "cache_bytes": 10 * 2**20} | limits
    return LoraDownloads(folder, allowed_networks=LOOPBACK, **settings)


def test_a_url_is_downloaded_once_and_kept_by_content_hash(server: str, tmp_path: Path) -> None:
    cache = downloads(tmp_path)
    first = cache.file_for(f"{server}/a.safetensors")
    assert first.read_bytes() == FILES["/a.safetensors"]
    before = hits.get("/a.safetensors", 0)
    assert cache.file_for(f"{server}/a.safetensors") == first
    assert hits.get("/a.safetensors", 0) == before, "the second use reads the cache"
    assert downloads(tmp_path).file_for(f"{server}/a.safetensors") == first, "and so does the next process"
    assert cache.file_for(f"{server}/same-as-a.safetensors") == first, "one blob for one content"


def test_a_pickle_file_is_refused_and_not_kept(server: str, tmp_path: Path) -> None:
    with pytest.raises(LoraUnavailable, match=r"not a safetensors file \(pickle"):
        downloads(tmp_path).file_for(f"{server}/pickle.bin")
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.part"))


def test_a_header_longer_than_the_file_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(LoraUnavailable, match="not a safetensors file"):
        downloads(tmp_path).file_for(f"{server}/lying-header.safetensors")


def test_a_file_over_the_size_cap_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(LoraUnavailable, match="larger than 1024 bytes"):
        downloads(tmp_path).file_for(f"{server}/huge.safetensors")
    assert not list(tmp_path.rglob("*.part"))


def test_a_missing_file_is_reported_with_its_url(server: str, tmp_path: Path) -> None:
    with pytest.raises(LoraUnavailable, match=r"LoRA .*/gone\.safetensors: .*answered HTTP 404"):
        downloads(tmp_path).file_for(f"{server}/gone.safetensors")


def test_private_addresses_are_refused_unless_allow_listed(server: str, tmp_path: Path) -> None:
    closed = LoraDownloads(tmp_path, max_bytes=1024, cache_bytes=2**20)
    with pytest.raises(UrlNotAllowed, match="does not fetch private addresses"):
        closed.file_for(f"{server}/a.safetensors")


def test_the_least_recently_used_files_leave_a_full_cache(server: str, tmp_path: Path) -> None:
    size = len(FILES["/a.safetensors"])
    cache = downloads(tmp_path, cache_bytes=2 * size)
    a = cache.file_for(f"{server}/a.safetensors")
    b = cache.file_for(f"{server}/b.safetensors")
    os.utime(a, (1, 1))  # a is the older of the two (mtimes can tie within a test)...
    os.utime(b, (2, 2))
    cache.file_for(f"{server}/a.safetensors")  # ...until it is used again: now b is the least recent
    c = cache.file_for(f"{server}/c.safetensors")
    assert a.exists() and c.exists() and not b.exists()
    before = hits.get("/b.safetensors", 0)
    assert cache.file_for(f"{server}/b.safetensors").exists(), "an evicted URL is downloaded again"
    assert hits["/b.safetensors"] == before + 1
