"""The values the store hands back: what a write did, and the records it keeps.

The store itself is :class:`phage.store.sql.SqlStore` (SQLite or PostgreSQL through
SQLAlchemy), and the coordinator's services are typed against it directly: with one
implementation, a separate protocol only drifts out of date. Every store method is a whole
use-case step in one transaction, so the coordinator never holds half-written state.
"""

from __future__ import annotations

from dataclasses import dataclass

from phage.domain import TaskState
from phage.domain.quorum import QuorumOutcome


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
    """Tokens (prompt + completion) the key may use in all; None: unlimited."""
