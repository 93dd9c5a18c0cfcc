"""Tasks: the run's report (`report.TaskReport`: the prompt the model saw, the options applied and
not applied, each image's safety verdict), written with the results.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:00:00

Tasks that finished before this revision have no report (NULL): nothing was applied to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("report_json", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("report_json")
