"""`qwen-image keys create | list | revoke`: API keys in the data dir's (or database's) task store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError

from qwen_image_server.cli.main import app, err, friendly_errors, invalid_setting, out
from qwen_image_server.service import server_webhook_secret
from qwen_image_server.settings import Settings, load_settings
from qwen_image_server.tasks.keys import DEFAULT_SCOPES, Scope, SqlKeyStore

keys_app = typer.Typer(help="Create, list and revoke API keys (once one exists, every API call needs one).")
app.add_typer(keys_app, name="keys")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="The server's data folder [default: ./data].")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A TOML file of settings.")]
Result = TypeVar("Result")

if TYPE_CHECKING:  # imported when a command runs, so that `--help` stays instant
    from qwen_image_server.tasks.database import Database


def settings_from(data_dir: Path | None, config: Path | None) -> Settings:
    try:
        return load_settings(config, data_dir=data_dir)
    except ValidationError as exc:
        raise invalid_setting(exc) from None


def with_database(settings: Settings, action: Callable[[Database], Awaitable[Result]]) -> Result:
    """Run `action` on the task database of `settings` (the data dir's, or `database_url`'s)."""
    from qwen_image_server.tasks.database import Database

    async def run() -> Result:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = Database(settings.resolved_database_url, listen=False)  # a command waits on nothing
        await database.start()
        try:
            return await action(database)
        finally:
            await database.close()

    return asyncio.run(run())


def _with_keys(settings: Settings, action: Callable[[SqlKeyStore], Awaitable[Result]]) -> Result:
    return with_database(settings, lambda database: action(SqlKeyStore(database)))


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    scope: Annotated[
        list[Scope] | None, typer.Option("--scope", help="generate, read or admin; repeat [default: generate, read].")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    with friendly_errors():
        scopes = tuple(scope) if scope else DEFAULT_SCOPES
        key, token = _with_keys(settings_from(data_dir, config), lambda keys: keys.create(name, scopes))
        out.print(token, highlight=False, soft_wrap=True)
        err.print(f"key {key.id} ({', '.join(key.scopes)}) created; this is the only time it is shown")
        hint = f"its callbacks are signed with its own secret: `qwen-image keys webhook-secret {key.id}`"
        err.print(hint, soft_wrap=True)


@keys_app.command("list")
def list_keys(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """List the keys: id, name, scopes, created, revoked."""
    with friendly_errors():
        keys = _with_keys(settings_from(data_dir, config), lambda store: store.list_keys())
        for key in keys:
            revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            scopes = ",".join(key.scopes)
            out.print(
                f"{key.id}  {key.name:<24} {scopes:<22} {key.created_at:%Y-%m-%d %H:%M}  {revoked}", highlight=False
            )


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a key: calls with it fail at once."""
    with friendly_errors():
        key = _with_keys(settings_from(data_dir, config), lambda keys: keys.revoke(key_id))
        out.print(f"revoked {key.id} ({key.name})", highlight=False)


@keys_app.command("webhook-secret")
def webhook_secret(
    key_id: Annotated[
        str | None, typer.Argument(help="A key's id: its secret. None: the secret of tasks made without a key.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print the `whsec_...` secret that signs callbacks (verify them with any Standard Webhooks library)."""
    with friendly_errors():
        settings = settings_from(data_dir, config)
        if key_id is None:
            secret = server_webhook_secret(settings)
        else:
            secret = _with_keys(settings, lambda keys: keys.webhook_secret(key_id))
        out.print(secret, highlight=False, soft_wrap=True)
