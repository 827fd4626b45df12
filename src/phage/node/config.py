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
    """Engine kind: ``transformers``, ``vllm``, ``llamacpp``, ``openai`` or ``auto``; None: jobs only."""
    engine_url: str | None = None
    """Base URL of the OpenAI-compatible server the ``openai`` engine talks to."""
    engine_port: int | None = None
    """Loopback port for a server the node runs (vllm, llamacpp); default: a free one."""
    gpu_memory_utilization: float | None = None
    """Share of GPU memory vLLM may take (vLLM's default when None)."""
    max_model_len: int | None = None
    """Context length for vLLM (``--max-model-len``) or llama.cpp (``-c``)."""
    engine_command: str | None = None
    """Command prefix replacing ``vllm`` / ``llama-server`` (a wrapper, a container, a stand-in)."""
    model: str | None = None
    """Model path or id for the engine."""
    model_name: str | None = None
    """Name tasks use for the model (default: from the model directory)."""
    model_memory_bytes: int | None = None
    """Memory a model may use here; default: free VRAM (or available RAM without a GPU)."""
    fetch_wait_ms: int = 20_000
    max_log_bytes: int = 64 * 1024
    host_vnodes: bool = True
    """Host VNodes of composable networks (when torch is installed)."""

    @property
    def enroll_address(self) -> str:
        """Where Register goes."""
        if self.enroll:
            return self.enroll
        host, _, port = self.coordinator.rpartition(":")
        return f"{host}:{int(port) + 1}"

    def engine_options(self) -> dict[str, object]:
        """Engine settings for :func:`phage.node.engines.make_engine` (None: the engine's default)."""
        return {
            "url": self.engine_url,
            "port": self.engine_port,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "command": self.engine_command,
            "log_dir": self.key_dir / "engine-logs",
        }

    @property
    def scratch_root(self) -> Path:
        """Root of per-task workspaces."""
        return self.work_dir or (self.key_dir / "work")
