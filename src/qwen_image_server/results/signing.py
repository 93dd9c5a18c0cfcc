"""Signed result URLs: anyone holding the URL may fetch the image until it expires, without an API
key (like the providers' result links). The signature is HMAC-SHA256 over `f"{key}\\n{expires}"`;
the expiry is part of the signed message, so it cannot be extended without the secret.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from qwen_image_server.errors import CallerError, QwenImageError

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
DEFAULT_TTL_SECONDS = 86_400
# Only the canonical form of a unix time: ASCII digits, no sign, spaces or leading zeros, at most
# 12 digits (int() would accept all of those, and huge numbers cost time to parse).
_EXPIRES_PATTERN = re.compile(r"[1-9][0-9]{0,11}")


class InvalidSignature(CallerError):
    status = 403
    code = "invalid_signature"


class ResultExpired(CallerError):
    status = 410
    code = "result_expired"


class InvalidSecretFile(QwenImageError):
    """The URL-signing secret file exists but does not hold a usable secret."""

    code = "invalid_secret_file"


@dataclass(frozen=True)
class SignedUrl:
    key: str
    expires: int
    signature: str

    @property
    def path(self) -> str:
        """The server-relative URL; the API layer prefixes its public base URL."""
        return f"/v1/results/{quote(self.key, safe='/')}?expires={self.expires}&sig={self.signature}"


class UrlSigner:
    def __init__(self, secret: bytes, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the URL-signing secret must be at least {MIN_SECRET_BYTES} bytes")
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def sign(self, key: str, now: datetime | None = None) -> SignedUrl:
        expires = int(_timestamp(now)) + self.ttl_seconds
        return SignedUrl(key=key, expires=expires, signature=self._signature(key, expires))

    def verify(self, key: str, expires: str | None, signature: str | None, now: datetime | None = None) -> int:
        """Return the expiry of a valid, unexpired URL. The signature is checked first, so a caller
        without a valid one learns nothing, not even whether the link would have expired."""
        if not expires or not signature or _EXPIRES_PATTERN.fullmatch(expires) is None:
            raise InvalidSignature("the result URL is not signed correctly; ask the API for a fresh URL")
        expiry = int(expires)
        expected = self._signature(key, expiry).encode("ascii")
        # Compare bytes: compare_digest refuses non-ASCII str, and the signature is attacker input.
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
            raise InvalidSignature("the result URL is not signed correctly; ask the API for a fresh URL")
        if _timestamp(now) > expiry:
            raise ResultExpired("this result has expired; results are kept for a limited time after the task ends")
        return expiry

    def _signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _timestamp(now: datetime | None) -> float:
    if now is None:
        return datetime.now(UTC).timestamp()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.timestamp()


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret kept in `path` (hex), creating it with 32 random bytes (mode 0600) if absent.

    Creation is race-free: the secret is written whole to a temporary file, then hard-linked to
    `path`, which fails if the file already exists. Whichever process links first wins, and every
    process reads back the winner's secret, never a half-written file.
    """
    if not path.exists():
        _create_secret(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidSecretFile(
            f"{path} does not hold a hex secret of at least {MIN_SECRET_BYTES} bytes; "
            "delete it to have a new one made (signed URLs already handed out stop working)"
        )
    return secret


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600 whatever the umask, so the secret is never readable
    # by others, not even for a moment.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secrets.token_bytes(SECRET_BYTES).hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use its secret
            path.hardlink_to(temp)
    finally:
        temp.unlink()
