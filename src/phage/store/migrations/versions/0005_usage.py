"""Usage metering per API key, model and node; optional credit limits on keys.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """A usage table (one row per key × model × node) and a nullable credit limit on keys."""
    op.add_column("api_keys", sa.Column("credit_limit_tokens", sa.BigInteger, nullable=True))
    op.create_table(
        "usage",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("usage")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("credit_limit_tokens")
