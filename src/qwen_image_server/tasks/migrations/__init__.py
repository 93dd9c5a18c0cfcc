"""Alembic migrations of the task database, applied by `upgrade_database()` at start-up (no alembic.ini).

To write a new one, add `versions/NNNN_name.py` by hand (or `alembic revision --autogenerate` with a
config whose `script_location` is this folder) and keep tasks/schema.py in step: the contract tests
compare the migrated database with schema.py's metadata.

Several processes (an API server, workers) may start at once on a new database; only one may create
the tables. SQLite serialises them already (every write transaction begins IMMEDIATE); PostgreSQL
takes a transaction-scoped advisory lock. Within one process, Alembic's module-global context allows
one migration at a time, so starts are serialised per event loop as well.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from weakref import WeakKeyDictionary

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Any fixed 64-bit number: the PostgreSQL advisory lock that migrating processes queue on.
POSTGRES_LOCK_KEY = 0x7177_656E_696D_6731  # "qwenimg1"

_locks: WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = WeakKeyDictionary()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def run_migrations(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind `connection` (in a transaction the caller commits) to `revision`."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
    command.upgrade(alembic_config(connection), revision)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` in one transaction."""
    lock = _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.begin() as connection:
        await connection.run_sync(run_migrations, revision)
