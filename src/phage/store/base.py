"""The repository interface the coordinator's services use.

One implementation today (:class:`phage.store.sql.SqlStore`, SQLite or
PostgreSQL through SQLAlchemy). Every method is a whole use-case step in one
transaction, so the coordinator never holds half-written state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from phage.domain import Attempt, Node, NodeState, Task, TaskResult, TaskState
from phage.domain.quorum import QuorumOutcome
from phage.errors import PhageError


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """The part of a queued task the scheduler needs."""

    id: str
    kind: str
    priority: int
    created_at: float
    spec: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FinishOutcome:
    """What recording a result did."""

    accepted: bool
    duplicate: bool
    task_state: TaskState | None
    message: str = ""
    requeued: bool = False
    task_id: str = ""
    quorum: QuorumOutcome | None = None
    """Set when this result completed a quorum (or was accepted with other votes on record)."""


@dataclass(frozen=True, slots=True)
class LostOutcome:
    """What failing a lost attempt did to its task."""

    attempt_id: str
    task_id: str
    task_state: TaskState
    requeued: bool


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key (the secret itself is never stored, only its hash)."""

    id: str
    name: str
    role: str
    created_at: float
    revoked: bool
    credit_limit_tokens: int | None = None
    """Tokens (prompt + completion) the key may use in all (top-ups raise it); None: unlimited."""
    used_tokens: int = 0
    """Tokens the key has been charged so far."""
    requests_per_minute: int | None = None
    """Chat and completion requests a minute; None: the coordinator's default."""
    tokens_per_minute: int | None = None
    """Tokens charged a minute; None: the coordinator's default."""
    max_concurrent: int | None = None
    """Chats in flight at once; None: the coordinator's default."""


class Store(Protocol):
    """Durable state of the coordinator."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Flush and disconnect."""

    async def add_tasks(self, tasks: Sequence[Task]) -> None:
        """Insert new tasks (already in state ``queued``) in one transaction."""

    async def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""

    async def list_tasks(
        self,
        *,
        state: TaskState | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[Task]:
        """Newest first; ``before`` pages by creation time."""

    async def count_tasks(self) -> dict[str, int]:
        """Number of tasks in each state."""

    async def queued_tasks(self) -> list[QueuedTask]:
        """Every queued task, for rebuilding the scheduler's index at start."""

    async def claim(self, node_id: str, task_ids: Sequence[str], now: float, lease_s: float) -> list[Attempt]:
        """Move queued tasks to ``dispatched`` for ``node_id``; skips any no longer queued."""

    async def mark_running(self, node_id: str, attempt_ids: Sequence[str], now: float) -> list[str]:
        """Attempts now running; returns those that were cancelled meanwhile."""

    async def finish(self, node_id: str, attempt_id: str, result: TaskResult, now: float) -> FinishOutcome:
        """Record an attempt's result and settle its task (verified, requeued or failed)."""

    async def finish_many(
        self, node_id: str, items: Sequence[tuple[str, TaskResult]], now: float
    ) -> list[FinishOutcome | PhageError]:
        """Record many results in one transaction; one outcome (or refusal) per item."""

    async def fail_lost(self, attempt_ids: Sequence[str], reason: str, now: float) -> list[LostOutcome]:
        """Mark attempts lost and requeue their tasks while attempts remain."""

    async def cancel_task(self, task_id: str, now: float) -> tuple[Task, list[Attempt]]:
        """Cancel a task; returns it and the open attempts a node must stop."""

    async def attempts_for(self, task_id: str) -> list[Attempt]:
        """Every attempt of a task, oldest first."""

    async def open_attempts(self) -> list[Attempt]:
        """Attempts still holding a lease (dispatched or running)."""

    async def upsert_node(self, node: Node) -> None:
        """Insert or update a node's registration."""

    async def get_node(self, node_id: str) -> Node | None:
        """One node, or None."""

    async def list_nodes(self) -> list[Node]:
        """Every node, newest registration first."""

    async def record_heartbeats(
        self, beats: Sequence[tuple[str, float, str]], leases: Sequence[tuple[str, float]] = ()
    ) -> None:
        """(node id, time, loaded model) for many nodes, and renewed attempt leases, at once."""

    async def set_node_state(self, node_id: str, state: NodeState) -> None:
        """Change a node's state."""

    async def add_api_key(self, key_id: str, secret_hash: str, name: str, role: str, now: float) -> None:
        """Store a new API key's hash."""

    async def find_api_key(self, secret_hash: str) -> ApiKeyRecord | None:
        """The key with this hash, if any."""

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every API key."""
