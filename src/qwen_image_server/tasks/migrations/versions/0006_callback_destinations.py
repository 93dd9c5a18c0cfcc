"""Callbacks: each one's destination (scheme, host and port: the unit of fair delivery), and the
callback URLs disabled by an HTTP 410 Gone answer.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from qwen_image_server.tasks.outbox import destination_of

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("callbacks") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("destination", sa.String(320), nullable=True))
    callbacks = sa.table("callbacks", sa.column("id", sa.String), sa.column("url", sa.Text), sa.column("destination"))
    bind = op.get_bind()
    for callback_id, url in bind.execute(sa.select(callbacks.c.id, callbacks.c.url)).all():
        bind.execute(callbacks.update().where(callbacks.c.id == callback_id).values(destination=destination_of(url)))
    with op.batch_alter_table("callbacks") as batch:
        batch.alter_column("destination", existing_type=sa.String(320), nullable=False)
    op.create_table(
        "disabled_callback_urls",
        sa.Column("url", sa.Text(), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("disabled_callback_urls")
    with op.batch_alter_table("callbacks") as batch:
        batch.drop_column("destination")
