"""Quorum jobs: the agreeing results a job's untrusted result needs (``tasks.min_quorum``).

Reputation counters (validated, failed_validation, disagreements, attestation_refusals and the
clean-run ``streak``) live in the existing ``nodes.reputation`` JSON, so nodes need no new column.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the column; existing tasks get 0 (no quorum: they settle exactly as before)."""
    op.add_column("tasks", sa.Column("min_quorum", sa.Integer, nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("min_quorum")
