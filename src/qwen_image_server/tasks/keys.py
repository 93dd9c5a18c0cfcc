"""API keys: created and revoked from the CLI, checked on every API call.

A key reads `qik_<id>_<secret>`. Only the SHA-256 of the secret is stored (the secret is 32 random
bytes, so a fast hash is enough: there is nothing to brute-force); a presented key is found by its
id and its secret compared with `hmac.compare_digest`. Tasks belong to the key id that made them.

Each key also has a webhook secret (`whsec_...`) that signs the callbacks of its tasks; unlike the
key it is kept in clear (the receiver verifies with the same secret) and can be shown again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from qwen_image_server.callbacks.signing import new_webhook_secret
from qwen_image_server.errors import CallerError
from qwen_image_server.tasks.database import Database
from qwen_image_server.tasks.model import utcnow
from qwen_image_server.tasks.schema import api_keys

KEYS_REQUIRED_TTL_SECONDS = 1.0
_TOKEN = re.compile(r"qik_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class Scope(StrEnum):
    GENERATE = "generate"  # create tasks
    READ = "read"  # read and cancel one's own tasks
    ADMIN = "admin"  # everything, including other keys' tasks


DEFAULT_SCOPES = (Scope.GENERATE, Scope.READ)


class KeyNotFound(CallerError):
    status = 404
    code = "key_not_found"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SqlKeyStore:
    """API keys in the task database (raises `StoreUnavailable` when it cannot take a call now)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._keys_required = False  # once True, for good (see `keys_required`)
        self._no_keys_seen_at: float | None = None  # when the database last said there is no key

    async def create(self, name: str, scopes: tuple[Scope, ...] = DEFAULT_SCOPES) -> tuple[ApiKey, str]:
        """A new key and its token; the token is shown once and never stored."""
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        row = {
            "id": key_id,
            "name": name,
            "secret_sha256": _digest(secret),
            "scopes_json": json.dumps([scope.value for scope in scopes]),
            "created_at": utcnow(),
            "revoked_at": None,
            "webhook_secret": new_webhook_secret(),
        }
        await self._database.run_write(lambda conn: conn.execute(insert(api_keys), row))
        self._keys_required = True
        return _key(row), f"qik_{key_id}_{secret}"

    async def list_keys(self) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        rows = await self._database.run_read(lambda conn: conn.execute(query).mappings().all())
        return [_key(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKey:
        def revoke(conn: Connection) -> Any:
            active = api_keys.c.revoked_at.is_(None)
            conn.execute(update(api_keys).where(api_keys.c.id == key_id, active).values(revoked_at=utcnow()))
            return conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()

        row = await self._database.run_write(revoke)
        if row is None:
            raise KeyNotFound(f"there is no key {key_id!r}; `qwen-image keys list` shows them")
        return _key(row)

    async def webhook_secret(self, key_id: str) -> str:
        """The secret that signs the key's callbacks (made on first use for keys older than callbacks)."""
        query = select(api_keys.c.id, api_keys.c.webhook_secret).where(api_keys.c.id == key_id)
        row = await self._database.run_read(lambda conn: conn.execute(query).first())  # once made, only read
        if row is not None and row.webhook_secret is None:
            missing = api_keys.c.webhook_secret.is_(None)
            make = update(api_keys).where(api_keys.c.id == key_id, missing).values(webhook_secret=new_webhook_secret())

            def make_secret(conn: Connection) -> Any:
                conn.execute(make)
                return conn.execute(query).first()

            row = await self._database.run_write(make_secret)
        if row is None:
            raise KeyNotFound(f"there is no key {key_id!r}; `qwen-image keys list` shows them")
        return str(row.webhook_secret)

    async def authenticate(self, token: str) -> ApiKey | None:
        """The active key `token` names, or None (malformed, unknown, wrong secret or revoked)."""
        match = _TOKEN.fullmatch(token.strip())
        if match is None:
            return None
        key_id, secret = match.groups()
        query = select(api_keys).where(api_keys.c.id == key_id)
        row = await self._database.run_read(lambda conn: conn.execute(query).mappings().first())
        if row is None or not hmac.compare_digest(row["secret_sha256"], _digest(secret)):
            return None
        key = _key(row)
        return key if key.active else None

    async def keys_required(self) -> bool:
        """Whether every call needs a valid key: once a key has been made, revoked or not. (Were it
        "any key still active", revoking the last key would open the server to anyone.) Keys are
        never deleted, so a yes is final; a no is asked again after `KEYS_REQUIRED_TTL_SECONDS` (it
        is asked on every call of an open server): a key made by another process (the CLI) is
        enforced within that time, one made here at once."""
        if self._keys_required:
            return True
        now = time.monotonic()
        if self._no_keys_seen_at is None or now - self._no_keys_seen_at > KEYS_REQUIRED_TTL_SECONDS:
            query = select(func.count()).select_from(api_keys)
            count = await self._database.run_read(lambda conn: conn.execute(query).scalar_one())
            self._keys_required, self._no_keys_seen_at = int(count) > 0, now
        return self._keys_required


def _key(row: object) -> ApiKey:
    values = dict(row)  # type: ignore[call-overload]
    return ApiKey(
        id=values["id"],
        name=values["name"],
        scopes=tuple(Scope(scope) for scope in json.loads(values["scopes_json"])),
        created_at=values["created_at"],
        revoked_at=values["revoked_at"],
    )
