"""Node configuration: one field per option of ``phage node`` (flag, ``PHAGE_NODE_*``, ``[node]`` key).

A pydantic model (not a dataclass) so that the file, environment and flag layers of
:mod:`phage.config` validate through one set of types and ranges; each field's docstring is its help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from phage.config import Bytes


def default_key_dir() -> Path:
    """``~/.phage/node``."""
    return Path.home() / ".phage" / "node"


class NodeConfig(BaseModel):
    """Everything ``phage node`` needs; one field per command-line option."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    coordinator: str = "127.0.0.1:9090"
    """``host:port`` of the coordinator's mutual-TLS listener, or several comma-separated (replicas on
    one database; a name may also resolve to several): the node uses one and moves on when it dies."""
    enroll: str | None = None
    """``host:port`` of the enrollment listener (one, or one per coordinator); default: each port + 1."""
    join_token: str | None = None
    """The pool's join token (printed by ``phage coordinator``); not needed in allowlist or open pools.
    Never taken on the command line, where process listings show it: set ``PHAGE_JOIN_TOKEN``, the
    file's key, or ``join_token_file``."""
    join_token_file: Path | None = None
    """File holding the join token (read when ``join_token`` is not set)."""
    ca_fingerprint: str | None = None
    """``sha256:…`` of the coordinator CA, pinned on first contact."""
    key_dir: Path = Field(default_factory=default_key_dir)
    """Identity key, TLS key, certificate and pinned CA live here (mode 0700)."""
    work_dir: Path | None = None
    """Per-task scratch directories; default ``key_dir/work``."""
    name: str = ""
    """Display name (default: the host name)."""
    max_concurrency: int = Field(default=4, ge=1, le=1024)
    """Jobs run at once (slots); the node also holds short tasks queued beside them."""
    sandbox: str | None = None
    """Sandbox backend: bwrap, gvisor or none (default: bwrap, and gvisor too for tasks that require it;
    gvisor alone where bwrap does not work)."""
    warm_sandboxes: int | None = Field(default=None, ge=0, le=1024)
    """bwrap sandboxes kept started ahead and reused, after a scrub, for the next task of the same
    limits (default: the node's slots; 0: a fresh sandbox for every task)."""
    polled_scratch: bool = False
    """Accept a scratch cap the node only polls where the kernel cannot enforce one (an
    unprivileged node): a job can then briefly overshoot it, e.g. by preallocating disk."""
    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    """Override the interval the coordinator asks for (tests)."""
    engine: Literal["transformers", "vllm", "llamacpp", "openai", "auto"] | None = None
    """Engine kind: ``transformers``, ``vllm``, ``llamacpp``, ``openai`` or ``auto``; None: jobs only."""
    engine_url: str | None = None
    """Base URL of the OpenAI-compatible server the ``openai`` engine talks to."""
    engine_port: int | None = Field(default=None, ge=1, le=65535)
    """Loopback port for a server the node runs (vllm, llamacpp); default: a free one."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """Share of GPU memory vLLM may take (vLLM's default when None)."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Context length for vLLM (``--max-model-len``) or llama.cpp (``-c``)."""
    engine_command: str | None = None
    """Command prefix replacing ``vllm`` / ``llama-server`` (a wrapper, a container, a stand-in)."""
    model: str | None = None
    """Model path or id for the engine."""
    model_name: str | None = None
    """Name tasks use for the model (default: from the model directory)."""
    model_memory_bytes: Bytes | None = None
    """Memory a model may use here, e.g. ``24GiB``; default: free VRAM (or available RAM without a GPU)."""
    log_format: Literal["text", "json"] = "text"
    """Log lines for people (text) or one JSON object per line (json)."""
    serve_blocks: str | None = None
    """Serve sharded-model blocks: ``auto`` (the coordinator picks) or ``START:END``; None: none."""
    sharded_model: str = ""
    """Serve blocks of this sharded model only ("" = whichever needs this node most)."""
    block_memory_bytes: Bytes | None = None
    """Memory blocks may use here, e.g. ``8GiB``; default: ``model_memory_bytes``, else available RAM."""
    dataplane_host: str = "127.0.0.1"
    """Where the node listens for other nodes: its sharded-model blocks, activation frames for its VNodes."""
    dataplane_port: int = 0
    """Port for that listener (0: a free one)."""
    dataplane_advertise: str = ""
    """Host peers should dial, when it differs from ``dataplane_host`` (NAT, 0.0.0.0)."""
    dataplane_relay: bool = False
    """Accept no connections from other nodes: blocks and activation frames go through the coordinator."""
    fetch_wait_ms: int = Field(default=20_000, ge=0)
    """How long one long-poll for work waits, in milliseconds."""
    max_log_bytes: Bytes = 64 * 1024
    """Largest stdout or stderr kept per attempt (the tail is kept)."""
    host_vnodes: bool = True
    """Host VNodes of composable networks (when torch is installed)."""

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
