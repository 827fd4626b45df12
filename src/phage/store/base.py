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
from phage.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page of the task list ended: the last task's creation time and id.

    Paging by creation time alone skips tasks that share one (every task of a batch submit
    does); the id breaks the tie, so each task is listed exactly once.
    """

    created_at: float
    id: str

    def encode(self) -> str:
        """The opaque form handed to clients (``next_cursor``)."""
        return f"{self.created_at!r}~{self.id}"

    @classmethod
    def decode(cls, text: str) -> PageCursor:
        """Parse :meth:`encode`'s output; InvalidInput naming ``cursor`` otherwise."""
        stamp, sep, task_id = text.partition("~")
        try:
            created_at = float(stamp)
        except ValueError:
            created_at = float("nan")
        if not sep or not task_id or created_at != created_at or len(task_id) > 64:
            raise InvalidInput("cursor must be a next_cursor value from an earlier page", field="cursor")
        return cls(created_at, task_id)


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
