"""Tasks: the batch key (`GenerationRequest.batch_key`), so that a worker claims the queued tasks
that can share one pipeline call with the task it takes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00

Tasks queued before this revision keep a NULL key: they run alone, as they would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("batch_key", sa.String(128), nullable=True))
    op.create_index("ix_tasks_status_batch_key", "tasks", ["status", "batch_key", "priority", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_status_batch_key", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("batch_key")
