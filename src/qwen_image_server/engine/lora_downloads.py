"""Adapters that requests give as URLs: downloaded once through the safe fetcher, kept by content hash.

A request's `loras: [{"path": URL}]` makes the worker fetch a file from wherever the caller says, so
it goes through `safe_fetch` like an input image (http(s) only, addresses checked at connect time,
`allowed_fetch_networks`, one deadline, a size cap: `lora_download_max_bytes`), streamed to disk
while it is hashed. It is kept only if it looks like a safetensors file (an 8-byte header length and
a JSON table of tensors); anything else, a pickle file above all, is deleted unread: unpickling
runs code, and nothing here ever unpickles.

The cache (`DATA_DIR/lora-cache`): `blobs/<sha256 of the content>.safetensors`, and for each URL a
small file `urls/<sha256 of the URL>` holding the content hash, so a URL is downloaded once and two
URLs of the same file share one blob (and one loaded adapter). A URL's content is assumed not to
change: a new version of an adapter needs a new URL. When the blobs exceed `lora_cache_bytes`, the
least recently used leave (use touches a blob); the one just asked for always stays.

This module imports no torch: it only moves bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from qwen_image_server.errors import FetchFailed, LoraUnavailable, UrlNotAllowed
from qwen_image_server.safe_fetch import FetchPolicy, IPNetwork, fetch_into

log = logging.getLogger(__name__)

FETCH_DEADLINE_S = 600.0  # a 2 GiB adapter at ~30 MB/s, with room to spare
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header


class LoraDownloads:
    """Downloads adapter URLs into a bounded on-disk cache and answers with the local file."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int,
        cache_bytes: int,
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> None:
        self.folder = folder
        self.cache_bytes = cache_bytes
        self._policy = FetchPolicy(
            allowed_networks=tuple(allowed_networks), max_bytes=max_bytes, deadline_s=FETCH_DEADLINE_S
        )

    def file_for(self, url: str) -> Path:
        """The local copy of `url`'s adapter, downloaded now if the cache has none; raises
        `LoraUnavailable` (or `UrlNotAllowed`) naming the URL."""
        known = self._known_blob(url)
        if known is not None:
            known.touch()  # recently used: the last to leave
            return known
        blob = self._download(url)
        self._url_entry(url).parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._url_entry(url), blob.stem.encode())
        self._trim(keep=blob)
        return blob

    def _known_blob(self, url: str) -> Path | None:
        try:
            digest = self._url_entry(url).read_text().strip()
        except OSError:
            return None
        blob = self._blob(digest)
        return blob if blob.is_file() else None

    def _download(self, url: str) -> Path:
        staging = self.folder / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=staging, suffix=".part", delete=False) as part:
            temporary = Path(part.name)

            def write(chunk: bytes) -> None:
                digest.update(chunk)
                part.write(chunk)

            try:
                size = fetch_into(url, self._policy, write)
            except UrlNotAllowed:
                temporary.unlink(missing_ok=True)
                raise
            except FetchFailed as exc:  # FetchFailed covers too large
                temporary.unlink(missing_ok=True)
                raise LoraUnavailable(f"LoRA {url}: {exc.message}", param="loras") from None
        try:
            check_safetensors_header(temporary, url)
        except LoraUnavailable:
            temporary.unlink(missing_ok=True)
            raise
        blob = self._blob(digest.hexdigest())
        blob.parent.mkdir(parents=True, exist_ok=True)
        temporary.replace(blob)  # atomic: a concurrent worker's copy of the same bytes is identical
        log.info("downloaded LoRA %s (%.1f MiB) into the adapter cache", url, size / 2**20)
        return blob

    def _trim(self, keep: Path) -> None:
        """Delete the least recently used blobs until the cache fits `cache_bytes` (`keep` stays)."""
        blobs = sorted(self._blobs(), key=_last_used)
        total = sum(_size(blob) for blob in blobs)
        for blob in blobs:
            if total <= self.cache_bytes:
                break
            if blob == keep:
                continue
            total -= _size(blob)
            with contextlib.suppress(FileNotFoundError):
                blob.unlink()
            log.info("LoRA cache over %d bytes: removed %s", self.cache_bytes, blob.name)

    def _blobs(self) -> list[Path]:
        return sorted((self.folder / "blobs").glob("*.safetensors"))

    def _blob(self, digest: str) -> Path:
        return self.folder / "blobs" / f"{digest}.safetensors"

    def _url_entry(self, url: str) -> Path:
        return self.folder / "urls" / hashlib.sha256(url.encode()).hexdigest()


def check_safetensors_header(path: Path, source: str) -> None:
    """Refuse (`LoraUnavailable`) a file that does not start as safetensors does: a little-endian
    8-byte length, then that many bytes of a JSON table of tensors that fit in the file. The tensors
    themselves are checked when `safetensors` reads them."""
    refusal = LoraUnavailable(
        f"LoRA {source} is not a safetensors file (pickle .bin/.pt/.ckpt adapters are refused: "
        "loading them can run code; convert it to .safetensors)",
        param="loras",
    )
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise refusal
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise refusal
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError):
            raise refusal from None
    if not isinstance(header, dict) or not any(key != "__metadata__" for key in header):
        raise refusal


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
