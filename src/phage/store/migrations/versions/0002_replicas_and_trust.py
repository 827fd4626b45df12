"""Best-of-N replicas on tasks, results on attempts, trust and quarantine on nodes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the columns; existing rows get the defaults (one replica, trusted, not quarantined)."""
    op.add_column("tasks", sa.Column("replicas", sa.Integer, nullable=False, server_default=sa.text("1")))
    op.add_column(
        "tasks", sa.Column("open_attempts", sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    op.add_column(
        "tasks", sa.Column("completed_attempts", sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    op.add_column("attempts", sa.Column("result", sa.JSON, nullable=True))
    op.add_column("nodes", sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.true()))
    op.add_column("nodes", sa.Column("quarantined", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("nodes", sa.Column("quarantine_reason", sa.Text, nullable=False, server_default=""))
    op.add_column("nodes", sa.Column("reputation", sa.JSON, nullable=False, server_default="{}"))


def downgrade() -> None:
    """Drop the columns."""
    for table, column in [
        ("nodes", "reputation"),
        ("nodes", "quarantine_reason"),
        ("nodes", "quarantined"),
        ("nodes", "trusted"),
        ("attempts", "result"),
        ("tasks", "completed_attempts"),
        ("tasks", "open_attempts"),
        ("tasks", "replicas"),
    ]:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
