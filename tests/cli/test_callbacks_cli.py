"""`qwen-image callbacks disabled | enable URL`: an operator lists the URLs that answered 410 Gone
and enables one again (the sender then calls it from the next callback on)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from qwen_image_server.cli import app
from qwen_image_server.tasks.model import utcnow
from qwen_image_server.tasks.outbox import SqlCallbackStore
from qwen_image_server.tasks.sql import SqlTaskStore

GONE = "https://hooks.example/gone"


def disable(data_dir: Path, url: str) -> None:
    async def run() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        store = SqlTaskStore.open(f"sqlite:///{data_dir / 'tasks.db'}")
        await store.start()
        try:
            await SqlCallbackStore(store.database).disable_url(url, "it answered HTTP 410 Gone", utcnow())
        finally:
            await store.close()

    asyncio.run(run())


def test_disabled_urls_are_listed_and_enabled_again(tmp_path: Path) -> None:
    runner, data = CliRunner(), ["--data-dir", str(tmp_path)]
    assert "no callback URL is disabled" in runner.invoke(app, ["callbacks", "disabled", *data]).output
    disable(tmp_path, GONE)
    listed = runner.invoke(app, ["callbacks", "disabled", *data])
    assert listed.exit_code == 0 and GONE in listed.stdout and "410 Gone" in listed.stdout
    enabled = runner.invoke(app, ["callbacks", "enable", GONE, *data])
    assert enabled.exit_code == 0 and f"enabled {GONE}" in enabled.stdout
    assert GONE not in runner.invoke(app, ["callbacks", "disabled", *data]).stdout
    again = runner.invoke(app, ["callbacks", "enable", GONE, *data])
    assert again.exit_code == 2 and "is not disabled" in again.output
