"""UrlSigner and the secret file: round trips, tampering, expiry, and race-free secret creation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from qwen_image_server.results import (
    InvalidSecretFile,
    InvalidSignature,
    ResultExpired,
    UrlSigner,
    load_or_create_secret,
)

SECRET = b"s" * 32
KEY = "task_0196a1b2c3d4e5f60718293a4b/0.png"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(SECRET, ttl_seconds=3600)


def test_sign_then_verify_round_trip(signer: UrlSigner) -> None:
    signed = signer.sign(KEY, now=NOW)
    assert signed.expires == int(NOW.timestamp()) + 3600
    assert signer.verify(KEY, str(signed.expires), signed.signature, now=NOW) == signed.expires


def test_signature_is_unpadded_urlsafe_hmac_sha256_of_key_and_expiry(signer: UrlSigner) -> None:
    signed = signer.sign(KEY, now=NOW)
    digest = hmac.new(SECRET, f"{KEY}\n{signed.expires}".encode(), hashlib.sha256).digest()
    assert signed.signature == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert "=" not in signed.signature and len(signed.signature) == 43


def test_path_carries_what_verify_needs(signer: UrlSigner) -> None:
    signed = signer.sign(KEY, now=NOW)
    url = urlsplit(signed.path)
    query = parse_qs(url.query, strict_parsing=True)
    assert url.path == f"/v1/results/{KEY}"
    assert signer.verify(KEY, query["expires"][0], query["sig"][0], now=NOW) == signed.expires


def test_default_ttl_is_one_day() -> None:
    assert UrlSigner(SECRET).sign(KEY, now=NOW).expires == int(NOW.timestamp()) + 86_400


def flip_first(signature: str) -> str:
    return ("B" if signature[0] == "A" else "A") + signature[1:]


# Each takes the good (expires, signature) of KEY and returns a tampered (key, expires, signature).
Tamper = Callable[[int, str], tuple[str, str, str]]
TAMPERINGS: dict[str, Tamper] = {
    "other key": lambda e, s: (KEY.replace("/0.png", "/1.png"), str(e), s),
    "later expiry": lambda e, s: (KEY, str(e + 1), s),
    "signature changed": lambda e, s: (KEY, str(e), flip_first(s)),
    "empty signature": lambda e, s: (KEY, str(e), ""),
    "padded signature": lambda e, s: (KEY, str(e), s + "="),
    "non-ascii signature": lambda e, s: (KEY, str(e), "é" * len(s)),
    "empty expiry": lambda e, s: (KEY, "", s),
    "unparsable expiry": lambda e, s: (KEY, "soon", s),
    "hex expiry": lambda e, s: (KEY, hex(e), s),
    # The same number spelled differently: refused, so each URL has exactly one valid form.
    "expiry with a space": lambda e, s: (KEY, f" {e}", s),
    "expiry with a plus": lambda e, s: (KEY, f"+{e}", s),
    "expiry with a leading zero": lambda e, s: (KEY, f"0{e}", s),
    "huge expiry": lambda e, s: (KEY, "9" * 40, s),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampered_urls_are_refused(signer: UrlSigner, tamper: Tamper) -> None:
    signed = signer.sign(KEY, now=NOW)
    key, expires, signature = tamper(signed.expires, signed.signature)
    with pytest.raises(InvalidSignature) as info:
        signer.verify(key, expires, signature, now=NOW)
    assert (info.value.status, info.value.code) == (403, "invalid_signature")


def test_missing_parameters_are_refused(signer: UrlSigner) -> None:
    signed = signer.sign(KEY, now=NOW)
    with pytest.raises(InvalidSignature):
        signer.verify(KEY, str(signed.expires), None, now=NOW)
    with pytest.raises(InvalidSignature):
        signer.verify(KEY, None, signed.signature, now=NOW)


def test_expired_urls_are_gone(signer: UrlSigner) -> None:
    signed = signer.sign(KEY, now=NOW)
    at_expiry = NOW + timedelta(seconds=3600)
    assert signer.verify(KEY, str(signed.expires), signed.signature, now=at_expiry) == signed.expires
    with pytest.raises(ResultExpired) as info:
        signer.verify(KEY, str(signed.expires), signed.signature, now=at_expiry + timedelta(seconds=1))
    assert (info.value.status, info.value.code) == (410, "result_expired")


def test_a_bad_signature_on_an_expired_url_says_invalid_not_expired(signer: UrlSigner) -> None:
    signed = signer.sign(KEY, now=NOW)
    later = NOW + timedelta(days=30)
    with pytest.raises(InvalidSignature):
        signer.verify(KEY, str(signed.expires), "x" + signed.signature[1:], now=later)


def test_signatures_differ_across_secrets() -> None:
    one = UrlSigner(SECRET).sign(KEY, now=NOW)
    other = UrlSigner(b"t" * 32).sign(KEY, now=NOW)
    assert one.expires == other.expires
    assert one.signature != other.signature
    with pytest.raises(InvalidSignature):
        UrlSigner(b"t" * 32).verify(KEY, str(one.expires), one.signature, now=NOW)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        UrlSigner(b"short")
    with pytest.raises(ValueError, match="ttl"):
        UrlSigner(SECRET, ttl_seconds=0)
    with pytest.raises(ValueError, match="timezone"):
        UrlSigner(SECRET).sign(KEY, now=datetime(2025, 1, 1))  # naive on purpose


def test_secret_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "url-secret"
    secret = load_or_create_secret(path)

    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes.fromhex(path.read_text().strip()) == secret
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["url-secret"]  # no temporary files left
    assert load_or_create_secret(tmp_path / "other-secret") != secret


def test_an_existing_secret_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "url-secret"
    path.write_text("ab" * 20 + "\n")
    assert load_or_create_secret(path) == b"\xab" * 20


@pytest.mark.parametrize("content", ["", "not hex at all", "abcd"])
def test_an_unusable_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "url-secret"
    path.write_text(content)
    with pytest.raises(InvalidSecretFile, match="url-secret"):
        load_or_create_secret(path)
    assert path.read_text() == content  # never overwritten: URLs signed with it may be out there


def test_concurrent_creation_ends_with_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "url-secret"
    count = 16
    barrier = threading.Barrier(count)
    secrets: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            secrets.append(load_or_create_secret(path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(secrets) == count
    assert len(set(secrets)) == 1
    assert secrets[0] == bytes.fromhex(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["url-secret"]


def test_losing_the_creation_race_reads_the_winners_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race made deterministic: the file appears after our existence check, before our link."""
    path = tmp_path / "url-secret"
    winner = "cd" * 32
    real_exists = Path.exists

    def exists_then_lose(self: Path, **kwargs: bool) -> bool:
        found = real_exists(self, **kwargs)
        if self == path and not found:
            path.write_text(winner)  # another process finishes creating it right now
        return found

    monkeypatch.setattr(Path, "exists", exists_then_lose)
    assert load_or_create_secret(path) == bytes.fromhex(winner)
    assert [p.name for p in tmp_path.iterdir()] == ["url-secret"]
