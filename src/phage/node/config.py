"""Node configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Everything ``phage node`` needs; one field per command-line option."""

    coordinator: str
    """``host:port`` of the coordinator's mutual-TLS listener."""
    enroll: str | None = None
    """``host:port`` of the enrollment listener; default: the coordinator's port + 1."""
    join_token: str | None = None
    ca_fingerprint: str | None = None
    """``sha256:…`` of the coordinator CA, pinned on first contact."""
    key_dir: Path
    """Identity key, TLS key, certificate and pinned CA live here (mode 0700)."""
    work_dir: Path | None = None
    """Per-task scratch directories; default ``key_dir/work``."""
    name: str = ""
    max_concurrency: int = 4
    sandbox: str | None = None
    """Backend name, or None for the strongest that works."""
    heartbeat_interval_s: float | None = None
    """Override the interval the coordinator asks for (tests)."""
    engine: str | None = None
    """Inference engine kind (``transformers``); None: this node runs jobs only."""
    model: str | None = None
    """Model path or id for the engine."""
    model_name: str | None = None
    """Name tasks use for the model (default: from the model directory)."""
    fetch_wait_ms: int = 20_000
    max_log_bytes: int = 64 * 1024

    @property
    def enroll_address(self) -> str:
        """Where Register goes."""
        if self.enroll:
            return self.enroll
        host, _, port = self.coordinator.rpartition(":")
        return f"{host}:{int(port) + 1}"

    @property
    def scratch_root(self) -> Path:
        """Root of per-task workspaces."""
        return self.work_dir or (self.key_dir / "work")
