"""Metering everything: credit balances with holds, a per-request log, node owner accounts, key rates.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Spent and held tokens on each key (backfilled from usage), holds, the request log, node accounts."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("used_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")))
        batch.add_column(
            sa.Column("reserved_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("requests_per_minute", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tokens_per_minute", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("max_concurrent", sa.Integer, nullable=True))
    op.execute(
        "UPDATE api_keys SET used_tokens = COALESCE((SELECT SUM(prompt_tokens + completion_tokens) "
        "FROM usage WHERE usage.key_id = api_keys.id), 0)"
    )
    op.create_table(
        "credit_holds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Index("ix_credit_holds_key", "key_id"),
    )
    op.create_table(
        "usage_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("ttft_s", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("reported_tokens", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("checked", sa.String(16), nullable=False, server_default=""),
        sa.Index("ix_usage_requests_key_time", "key_id", "started_at"),
        sa.Index("ix_usage_requests_time", "started_at"),
    )
    op.create_table(
        "node_accounts",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.execute(
        "INSERT INTO node_accounts (node_id, requests, prompt_tokens, completion_tokens, updated_at) "
        "SELECT node_id, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), MAX(updated_at) "
        "FROM usage GROUP BY node_id"
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("node_accounts")
    op.drop_table("usage_requests")
    op.drop_table("credit_holds")
    with op.batch_alter_table("api_keys") as batch:
        for name in (
            "max_concurrent",
            "tokens_per_minute",
            "requests_per_minute",
            "reserved_tokens",
            "used_tokens",
        ):
            batch.drop_column(name)
