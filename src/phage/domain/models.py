"""Tasks, attempts and nodes as the coordinator reasons about them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from phage.domain.spec import TaskSpec


class TaskKind(enum.StrEnum):
    """What a task asks a node to do."""

    JOB = "job"
    """A workspace and a manifest, run in a sandbox; outputs are collected."""
    NOOP = "noop"
    """Runs nothing: exercises queueing, dispatch and durability (health checks, benchmarks)."""
    GENERATE = "generate"
    """A prompt for a model; the output is checked by a verifier in a sandbox; best-of-N."""


class TaskState(enum.StrEnum):
    """The life of a task: submitted → queued → dispatched → running → verified | failed | cancelled."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the task can change no more."""
        return self in TERMINAL_TASK_STATES


TERMINAL_TASK_STATES = frozenset({TaskState.VERIFIED, TaskState.FAILED, TaskState.CANCELLED})
ACTIVE_TASK_STATES = frozenset({TaskState.DISPATCHED, TaskState.RUNNING})


class AttemptState(enum.StrEnum):
    """One try of a task on one node."""

    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    """The node died or its lease lapsed before it reported."""
    CANCELLED = "cancelled"

    @property
    def open(self) -> bool:
        """True while the attempt still holds a lease on its node."""
        return self in (AttemptState.DISPATCHED, AttemptState.RUNNING)


MAX_HELD_ASSIGNMENTS = 256
"""Most assignments one node holds at once: its slots plus the short tasks it keeps queued
beside them (``phage.node.window``). The node asks for fewer whenever its tasks are long."""


class NodeState(enum.StrEnum):
    """Where a node stands with the coordinator."""

    ONLINE = "online"
    DEAD = "dead"
    """Missed its heartbeats; its running work has been requeued."""
    REMOVED = "removed"
    """An admin removed it; its certificate is refused."""
    PENDING = "pending"
    """Registered in approval mode: it holds a certificate and heartbeats, but gets no work until approved."""
    REJECTED = "rejected"
    """An admin rejected it: refused now and whenever it tries to rejoin with this identity."""
    REFUSED = "refused"
    """The admission policy no longer admits it (its key left the workers file); refused until it does."""

    @property
    def shut_out(self) -> bool:
        """True when the node's RPCs are refused (its certificate no longer counts)."""
        return self in (NodeState.REMOVED, NodeState.REJECTED, NodeState.REFUSED)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file a task produced, stored content-addressed."""

    path: str
    sha256: str
    size: int


@dataclass(slots=True)
class TaskResult:
    """What a node reports when an attempt ends."""

    exit_code: int
    outputs: list[OutputFile] = field(default_factory=list)
    stdout_tail: str = ""
    stderr_tail: str = ""
    error: str = ""
    wall_time_s: float = 0.0
    passed: bool | None = None
    """Generate tasks: did the verifier pass (exit 0)? None for other kinds."""
    output_text: str = ""
    """Generate tasks: what was written to the workspace (the candidate)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine: str = ""
    model: str = ""
    sandbox: str = ""
    sandbox_sha256: str = ""
    input_sha256: str = ""
    output_sha256: str = ""
    attestation: str = ""
    """Hex of the node's Ed25519 signature over the attestation record (pki.attestation)."""
    attempt_id: str = ""
    """On a task's result: the attempt it was taken from."""
    task_id: str = ""
    """As the node reported it (part of what it attests)."""

    @property
    def succeeded(self) -> bool:
        """Passed (generate) or exited 0 (job), with no node-side error."""
        if self.error:
            return False
        return self.passed if self.passed is not None else self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for storage and the API."""
        return {
            "exit_code": self.exit_code,
            "outputs": [{"path": o.path, "sha256": o.sha256, "size": o.size} for o in self.outputs],
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "error": self.error,
            "wall_time_s": self.wall_time_s,
            "passed": self.passed,
            "output_text": self.output_text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "engine": self.engine,
            "model": self.model,
            "sandbox": self.sandbox,
            "sandbox_sha256": self.sandbox_sha256,
            "input_sha256": self.input_sha256,
            "output_sha256": self.output_sha256,
            "attestation": self.attestation,
            "attempt_id": self.attempt_id,
            "task_id": self.task_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            exit_code=int(data.get("exit_code", -1)),
            outputs=[OutputFile(o["path"], o["sha256"], int(o["size"])) for o in data.get("outputs", [])],
            stdout_tail=str(data.get("stdout_tail", "")),
            stderr_tail=str(data.get("stderr_tail", "")),
            error=str(data.get("error", "")),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            passed=data.get("passed"),
            output_text=str(data.get("output_text", "")),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            engine=str(data.get("engine", "")),
            model=str(data.get("model", "")),
            sandbox=str(data.get("sandbox", "")),
            sandbox_sha256=str(data.get("sandbox_sha256", "")),
            input_sha256=str(data.get("input_sha256", "")),
            output_sha256=str(data.get("output_sha256", "")),
            attestation=str(data.get("attestation", "")),
            attempt_id=str(data.get("attempt_id", "")),
            task_id=str(data.get("task_id", "")),
        )


@dataclass(slots=True)
class Task:
    """A unit of user work and its current state."""

    id: str
    kind: TaskKind
    state: TaskState
    spec: TaskSpec
    """What it runs: a job's manifest or a generate request, its workspace, isolation and quorum."""
    priority: int = 0
    max_attempts: int = 3
    attempts_made: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    owner: str = ""
    result: TaskResult | None = None
    error: str = ""
    cancel_requested: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    """Attempts that must complete: N for best-of-N."""
    open_attempts: int = 0
    completed_attempts: int = 0
    min_quorum: int = 0
    """Jobs: agreeing results from distinct nodes that validate an untrusted node's result
    (``domain/quorum.py``); ``max_attempts`` then caps the executions in all. 0: no quorum."""


@dataclass(slots=True)
class Attempt:
    """One try of a task on one node; every attempt is kept."""

    id: str
    """The assignment id: single-use, the key results are submitted against."""
    task_id: str
    node_id: str
    state: AttemptState
    dispatched_at: float
    started_at: float | None = None
    finished_at: float | None = None
    lease_expires_at: float = 0.0
    exit_code: int | None = None
    error: str = ""
    result: TaskResult | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A task handed to a node: what the node needs to run it."""

    attempt_id: str
    task_id: str
    kind: TaskKind
    spec: TaskSpec
    lease_expires_at: float


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """The part of a queued task the scheduler needs (the ready queue holds these)."""

    id: str
    kind: str
    priority: int
    created_at: float
    spec: TaskSpec


@dataclass(frozen=True, slots=True)
class ReceivedAssignment:
    """An assignment as a node received it, converted from the wire once, at the node's edge."""

    assignment_id: str
    task_id: str
    kind: str
    """As sent: a node may be handed a kind it does not know (and says so in its result)."""
    spec: TaskSpec
    input_sha256: str
    """What the node attests it was given, computed from the message it received."""
    workspace: bytes | None = None
    """The workspace archive when sent inline; otherwise downloaded by ``spec.workspace``."""
    max_output_bytes: int = 0
    problem: str = ""
    """Why the node will not run it (an invalid manifest); reported as the result's error."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """An assignment plus the workspace bytes sent inline with it (if small)."""

    assignment: Assignment
    workspace: bytes | None
    workspace_sha256: str
    workspace_size: int
    input_sha256: str


@dataclass(slots=True)
class Node:
    """A machine that runs work for the pool."""

    id: str
    """Base64 of the node's Ed25519 public key: its identity."""
    name: str
    state: NodeState
    registered_at: float
    last_heartbeat: float
    max_concurrency: int = 4
    active_tasks: int = 0
    hardware: dict[str, Any] = field(default_factory=dict)
    sandboxes: list[str] = field(default_factory=list)
    loaded_model: str = ""
    version: str = ""
    cert_serial: str = ""
    trusted: bool = True
    quarantined: bool = False
    quarantine_reason: str = ""
    reputation: dict[str, int] = field(default_factory=dict)
    """Counters: validated, failed_validation, attestation_refusals."""
    draining: bool = False
    """Finishes the work it holds and takes no more (an admin's drain)."""
    max_jobs: int | None = None
    """Cap on its concurrent assignments from the workers file or an admin; None: its own concurrency."""
