"""`qwen-image callbacks disabled | enable URL`: callback URLs that answered 410 Gone.

A receiver that answers 410 Gone asks not to be called again (Standard Webhooks); the sender then
records later callbacks to that exact URL as refused without sending them. An operator who knows
the receiver is back lists such URLs and enables one again.
"""

from __future__ import annotations

from typing import Annotated

import typer

from qwen_image_server.cli.keys import ConfigOpt, DataDirOpt, settings_from, with_database
from qwen_image_server.cli.main import app, err, friendly_errors, out
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.tasks.outbox import SqlCallbackStore

callbacks_app = typer.Typer(help="Callback URLs that answered 410 Gone: list them, enable one again.")
app.add_typer(callbacks_app, name="callbacks")


@callbacks_app.command("disabled")
def disabled(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """List the disabled callback URLs: when, and why."""
    with friendly_errors():
        found = with_database(
            settings_from(data_dir, config), lambda database: SqlCallbackStore(database).disabled_urls()
        )
        for entry in found:
            out.print(f"{entry.disabled_at:%Y-%m-%d %H:%M}  {entry.url}  ({entry.reason})", highlight=False)
        if not found:
            err.print("no callback URL is disabled")


@callbacks_app.command("enable")
def enable(
    url: Annotated[str, typer.Argument(help="The exact URL, as `callbacks disabled` shows it.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Call a disabled URL again, from the next callback on (the refused ones are not sent again)."""
    with friendly_errors():
        enabled = with_database(
            settings_from(data_dir, config), lambda database: SqlCallbackStore(database).enable_url(url)
        )
        if not enabled:
            raise InvalidParameter(f"{url} is not disabled; `qwen-image callbacks disabled` lists those that are")
        out.print(f"enabled {url}", highlight=False)
