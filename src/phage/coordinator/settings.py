"""Coordinator configuration: pydantic-settings, environment prefix ``PHAGE_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """``~/.phage`` unless overridden."""
    return Path.home() / ".phage"


class CoordinatorSettings(BaseSettings):
    """Everything a coordinator needs to start; each field documents its unit."""

    model_config = SettingsConfigDict(env_prefix="PHAGE_", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    """SQLite database, CA, blobs, admin key and join token live here."""
    database_url: str | None = None
    """SQLAlchemy async URL; default is SQLite in ``data_dir``."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9090
    """Node RPCs (mutual TLS required)."""
    enroll_port: int | None = None
    """Register only (server TLS); default ``grpc_port + 1``."""
    advertise_host: str | None = None
    """Address nodes should dial, printed in the ``phage node`` line; default ``grpc_host``."""
    heartbeat_interval_s: float = 10.0
    missed_heartbeats: int = 3
    """A node silent for ``interval × missed`` is dead and its work is requeued."""
    default_max_attempts: int = 3
    max_workspace_bytes: int = 64 * 1024 * 1024
    """Largest uploaded workspace archive, and largest unpacked workspace."""
    max_output_bytes: int = 256 * 1024 * 1024
    """Largest single output file a node may upload."""
    max_request_bytes: int = 1024 * 1024
    """Largest JSON request body."""
    inline_workspace_bytes: int = 1024 * 1024
    """Workspaces up to this size travel inside the assignment; larger ones are streamed."""
    fetch_wait_ms_max: int = 30_000
    max_batch_submit: int = 10_000
    sqlite_synchronous: str = "NORMAL"
    reverify_sample: float = Field(default=0.05, ge=0.0, le=1.0)
    """Fraction of trusted nodes' claimed passes the coordinator re-verifies (untrusted: all)."""
    verify_sandbox: str | None = None
    """Sandbox backend for re-verification; default: the strongest that works here."""
    join_token: str | None = None
    """Fixed join token; default: generated once and kept in ``data_dir/join-token``."""

    @property
    def lease_s(self) -> float:
        """How long an assignment survives without its node's heartbeat."""
        return self.heartbeat_interval_s * self.missed_heartbeats

    @property
    def enrollment_port(self) -> int:
        """The port Register is served on."""
        return self.enroll_port if self.enroll_port is not None else self.grpc_port + 1

    @property
    def db_url(self) -> str:
        """The store URL in force."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'phage.db'}"
