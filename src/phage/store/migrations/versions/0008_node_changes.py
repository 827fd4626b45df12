"""Node rows say when something other than a heartbeat last changed them; lapsed leases are indexed.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``changed_at`` (wall-clock seconds): replicas re-read only the nodes changed since they looked."""
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("changed_at", sa.Float, nullable=False, server_default="0"))
        batch.create_index("ix_nodes_changed_at", ["changed_at"])
    op.create_index("ix_attempts_state_lease", "attempts", ["state", "lease_expires_at"])


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_attempts_state_lease", table_name="attempts")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_index("ix_nodes_changed_at")
        batch.drop_column("changed_at")
