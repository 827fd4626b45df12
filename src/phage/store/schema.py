"""Table definitions (SQLAlchemy Core). Migrations in ``migrations/`` create exactly these."""

from __future__ import annotations

import time

import sqlalchemy as sa

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("attempts_made", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("owner", sa.String(64), nullable=False, default=""),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("replicas", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("open_attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("completed_attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("min_quorum", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Index("ix_tasks_state_priority", "state", "priority", "created_at"),
    sa.Index("ix_tasks_created", "created_at"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("node_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("dispatched_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=False),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Index("ix_attempts_task", "task_id"),
    sa.Index("ix_attempts_node_state", "node_id", "state"),
    sa.Index("ix_attempts_state_lease", "state", "lease_expires_at"),  # the leader's sweep of lapsed leases
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    sa.Column("max_concurrency", sa.Integer, nullable=False),
    sa.Column("hardware", sa.JSON, nullable=False),
    sa.Column("sandboxes", sa.JSON, nullable=False),
    sa.Column("loaded_model", sa.String(255), nullable=False, default=""),
    sa.Column("version", sa.String(64), nullable=False, default=""),
    sa.Column("cert_serial", sa.String(64), nullable=False, default=""),
    sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("quarantined", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("quarantine_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("reputation", sa.JSON, nullable=False, server_default="{}"),
    sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("max_jobs", sa.Integer, nullable=True),
    # set by every write but a heartbeat's (sql_nodes._HEARTBEAT keeps it unless the model changed), so
    # replicas can follow admin and state changes without re-reading every node every second
    sa.Column(
        "changed_at", sa.Float, nullable=False, default=time.time, onupdate=time.time, server_default="0"
    ),
    sa.Index("ix_nodes_changed_at", "changed_at"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("credit_limit_tokens", sa.BigInteger, nullable=True),
    sa.Column("used_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("reserved_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("requests_per_minute", sa.Integer, nullable=True),
    sa.Column("tokens_per_minute", sa.BigInteger, nullable=True),
    sa.Column("max_concurrent", sa.Integer, nullable=True),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("updated_at", sa.Float, nullable=False),
)

credit_holds = sa.Table(
    "credit_holds",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_credit_holds_key", "key_id"),
)

usage_requests = sa.Table(
    "usage_requests",
    metadata,
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

node_accounts = sa.Table(
    "node_accounts",
    metadata,
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("updated_at", sa.Float, nullable=False),
)

networks = sa.Table(
    "networks",
    metadata,
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

vnode_states = sa.Table(
    "vnode_states",
    metadata,
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
