"""Coordinator configuration: table ``[coordinator]``, environment prefix ``PHAGE_``.

Every field is an option of ``phage coordinator`` (flag, ``PHAGE_*`` variable and file key; see
:mod:`phage.config` for the layering and ``docs/configuration.md`` for the reference generated from
these docstrings, so a field's docstring is its user-facing help). A plain model rather than
pydantic-settings: the environment is one layer that :func:`phage.config.resolve` merges, and
constructing settings in code (the demo, tests) must not pick up whatever ``PHAGE_*`` is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from phage.config import Bytes


def default_data_dir() -> Path:
    """``~/.phage`` unless overridden."""
    return Path.home() / ".phage"


class CoordinatorSettings(BaseModel):
    """Everything a coordinator needs to start; each field documents its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    """SQLite database, CA, blobs, admin key and join token live here."""
    database_url: str | None = None
    """SQLAlchemy async URL; default is SQLite in ``data_dir``."""
    http_host: str = "127.0.0.1"
    """Address the HTTP API listens on (``0.0.0.0`` or ``::`` for every interface)."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """HTTP API port (0: any free port, written to ``data_dir/coordinator.json``)."""
    https: bool = False
    """Serve the HTTP API over TLS. The certificate is ``tls_cert_file`` if set, else one the pool's
    own CA issues (for ``http_host``, ``advertise_host``, ``https_names`` and localhost); clients pin
    that CA with ``--ca-fingerprint``, the fingerprint in the join line."""
    tls_cert_file: Path | None = None
    """An operator's certificate (PEM, chain after the leaf) for HTTPS; setting it turns HTTPS on."""
    tls_key_file: Path | None = None
    """The private key (PEM) of ``tls_cert_file``."""
    https_names: str = ""
    """More names or addresses the CA-issued HTTPS certificate is valid for, comma-separated."""
    grpc_host: str = "127.0.0.1"
    """Address the node listeners (mutual TLS and enrollment) bind."""
    grpc_port: int = Field(default=9090, ge=0, le=65535)
    """Node RPCs (mutual TLS required)."""
    enroll_port: int | None = Field(default=None, ge=0, le=65535)
    """Register only (server TLS); default ``grpc_port + 1``."""
    advertise_host: str | None = None
    """Address nodes should dial, printed in the ``phage node`` line; default ``grpc_host``."""
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between a node's heartbeats (the coordinator tells nodes this)."""
    missed_heartbeats: int = Field(default=3, ge=1)
    """A node silent for ``interval × missed`` is dead and its work is requeued."""
    default_max_attempts: int = Field(default=3, ge=1)
    """Attempts a task gets when it does not say (a failed attempt on a lost node is retried)."""
    max_workspace_bytes: Bytes = 64 * 1024 * 1024
    """Largest uploaded workspace archive, and largest unpacked workspace."""
    max_output_bytes: Bytes = 256 * 1024 * 1024
    """Largest single output file a node may upload."""
    max_request_bytes: Bytes = 1024 * 1024
    """Largest JSON request body."""
    inline_workspace_bytes: Bytes = 1024 * 1024
    """Workspaces up to this size travel inside the assignment; larger ones are streamed."""
    fetch_wait_ms_max: int = Field(default=30_000, ge=0)
    """Longest a node's long-poll for work may wait, in milliseconds."""
    max_batch_submit: int = Field(default=10_000, ge=1)
    """Most tasks one ``POST /api/tasks`` may submit."""
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    """SQLite's ``PRAGMA synchronous`` (NORMAL with WAL loses no committed task on a crash of phage)."""
    reverify_sample: float = Field(default=0.05, ge=0.0, le=1.0)
    """Fraction of trusted nodes' claimed passes the coordinator re-verifies (untrusted: all)."""
    verify_sandbox: str | None = None
    """Sandbox backend for re-verification; default: the strongest that works here."""
    min_quorum: int = Field(default=2, ge=1, le=16)
    """Jobs: agreeing results from distinct nodes that validate an untrusted node's result (a job's
    ``min_quorum`` overrides it); 1 accepts untrusted results alone. See ``domain/quorum.py``."""
    target_results: int = Field(default=1, ge=1, le=16)
    """Jobs: copies dispatched at once when a job is first queued (a job's ``target_results`` overrides
    it); 1 lets adaptive replication ask for second opinions only where a result needs one."""
    reliable_after: int = Field(default=10, ge=0)
    """Consecutive validated results after which an untrusted node's job results are accepted alone
    (doubled per disagreement it was caught in); 0: always replicate untrusted results."""
    spot_check: float = Field(default=0.1, ge=0.0, le=1.0)
    """Probability that a reliable untrusted node's result still gets a second opinion."""
    chat_max_tokens: int = 32_768
    """Largest ``max_tokens`` a chat request may ask for."""
    chat_default_max_tokens: int = 1024
    """``max_tokens`` when a chat request does not say."""
    approved_workloads_only: bool = False
    """Run only workloads (a job's code, a generate task's verifier) whose digest an admin approved
    (``phage workloads approve``); anything else is refused at submit."""
    log_format: Literal["text", "json"] = "text"
    """Log lines for people (text) or one JSON object per line (json), each with its request id."""
    join_token: str | None = None
    """Fixed join token; default: generated once and kept in ``data_dir/join-token``."""
    admission: Literal["token", "allowlist", "approval", "open"] = "token"
    """Who may join (``coordinator/admission.py``): token holders (trusted), the keys in the workers
    file (trusted, no token needed), token holders once an admin approves them, or anyone (untrusted)."""
    workers_file: Path | None = None
    """Allowlist mode: the ``workers.json`` of node keys (the sandrun-compatible format), re-read when it
    changes (default in ``data_dir``)."""
    pool_api_open: bool = False
    """Serve the sandrun-compatible pool API (``/submit``, ``/status``, ``/outputs``, ``/pool``) to callers
    without an API key, as sandrun's clients send none. Off by default: anyone reaching the HTTP port
    could submit."""

    @model_validator(mode="after")
    def _tls_files_together(self) -> CoordinatorSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self

    @property
    def serves_https(self) -> bool:
        """True when the HTTP API is served over TLS."""
        return self.https or self.tls_cert_file is not None

    @property
    def lease_s(self) -> float:
        """How long an assignment survives without its node's heartbeat."""
        return self.heartbeat_interval_s * self.missed_heartbeats

    @property
    def enrollment_port(self) -> int:
        """The port Register is served on."""
        return self.enroll_port if self.enroll_port is not None else self.grpc_port + 1

    @property
    def workers_path(self) -> Path:
        """The allowlist file in force."""
        return self.workers_file or self.data_dir / "workers.json"

    @property
    def db_url(self) -> str:
        """The store URL in force."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'phage.db'}"
