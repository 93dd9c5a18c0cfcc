"""Alembic migrations of the task database, applied by `run_migrations()` at start-up (no alembic.ini).

To write a new one, add `versions/NNNN_name.py` by hand (or `alembic revision --autogenerate` with a
config whose `script_location` is this folder) and keep tasks/schema.py in step: the contract tests
compare the migrated database with schema.py's metadata.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def run_migrations(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind `connection` to `revision`; call it through
    `AsyncConnection.run_sync` inside a transaction (which the caller commits)."""
    command.upgrade(alembic_config(connection), revision)
