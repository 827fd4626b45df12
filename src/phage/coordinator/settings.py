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
    """Sandbox backend for re-verification; default: the default that works here (bwrap, else gVisor)."""
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
    sharded_check_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Sharded models: probability that one step of an untrusted node's blocks is recomputed on another
    node serving them (``dataplane/checks.py``); 1.0 checks every step."""
    chat_max_tokens: int = 32_768
    """Largest ``max_tokens`` a chat request may ask for."""
    chat_default_max_tokens: int = 1024
    """``max_tokens`` when a chat request does not say."""
    chat_aliases: dict[str, list[str]] = Field(default_factory=dict)
    """Model names clients may use for others, with ordered fallbacks, as JSON:
    ``{"gpt-4o": ["Qwen2.5-72B-Instruct-AWQ", "Qwen2.5-7B-Instruct"]}``. A request for an alias goes to
    the first listed model some node serves, and to the next ones when none of its nodes can take it."""
    chat_untrusted_nodes: bool = False
    """Send chats (prompts included) to untrusted nodes (open admission) too. Off by default: a
    stranger's machine sees every prompt it serves. When on, their answers are checked (below)."""
    chat_check_untrusted: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of untrusted nodes' chat answers a trusted node re-scores after the response (1: all;
    0: off)."""
    chat_check_trusted: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of trusted nodes' chat answers checked the same way (a sample; 0: off)."""
    chat_requests_per_minute: int | None = Field(default=None, ge=1)
    """Chat and completion requests one API key may make a minute (a key's own limit overrides it);
    None: unlimited. Over it: 429 with ``Retry-After``."""
    chat_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Tokens one API key may be charged a minute (a key's own limit overrides it); None: unlimited."""
    chat_max_concurrent: int | None = Field(default=None, ge=1)
    """Chats one API key may have in flight at once (a key's own limit overrides it); None: unlimited."""
    chat_rate_window_s: float = Field(default=60.0, gt=0)
    """The window the per-minute limits count over (sliding); shorter only for tests."""
    chat_client_stall_s: float = Field(default=30.0, gt=0)
    """A streaming client that takes no data for this long is cut off (its node and slot freed)."""
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

    # ---- retention (coordinator/retention.py) ------------------------------
    task_retention_s: float = Field(default=30 * 86400.0, ge=0)
    """Finished tasks (and their outputs, once nothing else refers to them) are deleted this long
    after they finish; 0 keeps them for ever."""
    blob_grace_s: float = Field(default=3600.0, ge=60)
    """A blob nothing refers to is deleted once it is this old (uploads and submits in flight are younger)."""
    gc_period_s: float = Field(default=3600.0, gt=0)
    """How often the coordinator sweeps (``phage gc`` sweeps at once)."""
    heap_freeze_period_s: float = Field(default=10.0, ge=0)
    """How often objects that survived the young generations' collection are moved out of the cycle
    collector's way (coordinator/heap.py), so a big pool's state does not stop the event loop for a
    full collection several times a minute; 0 leaves Python's collector as it is."""
    heap_deep_period_s: float = Field(default=3600.0, gt=0)
    """How often everything is collected once, frozen objects included (one longer pause)."""
    node_upload_bytes_per_hour: int = Field(default=16 * 1024**3, ge=1024 * 1024)
    """Bytes one node may upload (outputs) per hour, as a burst and a steady rate; beyond it UploadBlob
    is refused until the budget refills. With the sweep, this bounds what a node can leave on disk."""

    # ---- what user (non-admin) keys may ask for (coordinator/quotas.py) ------
    user_max_priority: int = Field(default=10, ge=0, le=1000)
    """Highest priority a user key may set (admins: up to 1000); any key may go down to -1000."""
    user_max_attempts: int = Field(default=5, ge=1, le=100)
    """Highest ``max_attempts`` a user key may set (admins: up to 100)."""
    user_max_tasks_per_request: int = Field(default=1000, ge=1)
    """Tasks one user request may create (``count`` and batch items together)."""
    user_max_open_tasks: int = Field(default=10_000, ge=1)
    """Unfinished tasks one user key may have at once; a submit past it gets 429."""

    # ---- limits against unauthenticated peers (docs/security.md) ----------
    http_max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest request head (request line and headers); a larger one gets 431 and is closed."""
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    """A connection must finish each request head this long after it begins (or after connecting)."""
    http_keep_alive_s: int = Field(default=5, ge=1)
    """An idle keep-alive connection is closed after this many seconds."""
    http_max_connections: int = Field(default=2048, ge=16)
    """Open HTTP connections at once; further ones are closed at once (bounds memory with the above)."""
    enroll_max_message_bytes: int = Field(default=64 * 1024, ge=4096)
    """Largest message the enrollment port reads (a Register is a CSR and a hardware summary)."""
    register_burst: int = Field(default=60, ge=1)
    """Register attempts per source address allowed at once (then ``register_per_s``)."""
    register_per_s: float = Field(default=5.0, gt=0)
    """Register attempts per source address: a burst, then this many per second."""
    join_failures_burst: int = Field(default=10, ge=1)
    """Wrong join tokens or signatures per source address allowed at once (then ``join_failures_per_s``)."""
    join_failures_per_s: float = Field(default=0.2, gt=0)
    """Wrong join tokens or signatures per source address before its Registers are refused for a while."""
    new_nodes_burst: int = Field(default=32, ge=1)
    """New node identities one source address may register at once (then ``new_nodes_per_s``)."""
    new_nodes_per_s: float = Field(default=0.2, gt=0)
    """New node identities one source address may register (what bounds open-mode floods)."""
    auth_failures_burst: int = Field(default=100, ge=1)
    """Failed API keys per source address allowed at once (then ``auth_failures_per_s``)."""
    auth_failures_per_s: float = Field(default=2.0, gt=0)
    """Failed API keys per source address before its HTTP requests get 429 for a while."""

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
