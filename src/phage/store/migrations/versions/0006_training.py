"""Composable networks: training jobs and the state of each of their VNodes.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """A row per network and one per VNode (placement, progress, last checkpoints)."""
    op.create_table(
        "networks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "vnode_states",
        sa.Column("network_id", sa.String(64), sa.ForeignKey("networks.id"), primary_key=True),
        sa.Column("vnode_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("generation", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("step", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_batch", sa.Integer, nullable=False, server_default=sa.text("-1")),
        sa.Column("checkpoint", sa.String(64), nullable=False, server_default=""),
        sa.Column("checkpoint_step", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("validated_checkpoint", sa.String(64), nullable=False, server_default=""),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("vnode_states")
    op.drop_table("networks")
