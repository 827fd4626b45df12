"""Admission on nodes: a drain flag and a per-node cap on concurrent assignments.

The admission states themselves (pending, rejected, refused) live in the existing
``state`` column, which is free text, so they need no schema change.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the columns; existing nodes are not draining and have no cap beyond their own."""
    op.add_column("nodes", sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("nodes", sa.Column("max_jobs", sa.Integer, nullable=True))


def downgrade() -> None:
    """Drop the columns."""
    for column in ("max_jobs", "draining"):
        with op.batch_alter_table("nodes") as batch:
            batch.drop_column(column)
