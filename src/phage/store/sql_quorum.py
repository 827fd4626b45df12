"""The store's half of job quorums (``domain/quorum.py``): votes read from attempt rows, the
decision taken inside the transaction that records a result, and the nodes' reputation
counters updated in that same transaction — so a crash can never leave a task verified
without its voters credited, or credit a vote twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.domain import AttemptState, TaskResult, TaskState
from phage.domain.quorum import QuorumOutcome, Standing, Verdict, Vote, credited, decide, penalised
from phage.errors import NotFound
from phage.store.rows import OPEN, attempt_from_row, chunks
from phage.store.schema import attempts, nodes
from phage.store.writer import GroupCommitWriter

VOTED = (AttemptState.SUCCEEDED.value, AttemptState.FAILED.value)


@dataclass(frozen=True, slots=True)
class QuorumPlan:
    """What recording a vote does to its task."""

    state: TaskState | None = None
    """The task's new state; None: unchanged (other copies still running)."""
    result: dict[str, Any] | None = None
    error: str = ""
    replicas: int | None = None
    """Results now wanted in all, when more copies are needed."""
    requeue: bool = False
    outcome: QuorumOutcome | None = None


def _digest(result: TaskResult) -> str:
    """The outputs' hash: as attested, or (for a result without one) computed the same way."""
    if result.output_sha256:
        return result.output_sha256
    files = sorted([o.path, o.sha256] for o in result.outputs)
    blob = json.dumps({"files": files, "text": result.output_text}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def load_votes(conn: Connection, task_id: str) -> list[tuple[Vote, TaskResult]]:
    """A task's completed executions (a verdict, not a node failure), oldest first."""
    q = (
        attempts.select()
        .where(attempts.c.task_id == task_id, attempts.c.state.in_(VOTED), attempts.c.error == "")
        .order_by(attempts.c.finished_at, attempts.c.id)
    )
    out = []
    for row in conn.execute(q):
        att = attempt_from_row(row)
        if att.result is not None:
            vote = Vote(
                att.id, att.node_id, _digest(att.result), att.result.exit_code, att.finished_at or 0.0
            )
            out.append((vote, att.result))
    return out


def plan_quorum(
    conn: Connection,
    task_id: str,
    *,
    min_quorum: int,
    open_attempts: int,
    attempts_made: int,
    max_attempts: int,
    new: Mapping[str, Standing],
) -> QuorumPlan | None:
    """Count the task's votes; None when it has none yet (the ordinary retry rules apply)."""
    found = load_votes(conn, task_id)
    if not found:
        return None
    votes = [v for v, _ in found]
    step = decide(
        task_id,
        votes,
        min_quorum=min_quorum,
        new=new,
        open_attempts=open_attempts,
        attempts_made=attempts_made,
        max_attempts=max_attempts,
    )
    if step.verdict is not None:
        accepted = next(r for v, r in found if v.attempt_id == step.verdict.accepted.attempt_id)
        ok = accepted.succeeded
        return QuorumPlan(
            state=TaskState.VERIFIED if ok else TaskState.FAILED,
            result={**accepted.to_dict(), "attempt_id": step.verdict.accepted.attempt_id},
            error="" if ok else (accepted.error or f"exited with code {accepted.exit_code}"),
            outcome=QuorumOutcome(step.verdict, apply_reputation(conn, step.verdict)),
        )
    if step.fail_reason:
        return QuorumPlan(state=TaskState.FAILED, error=step.fail_reason)
    waiting = TaskState.QUEUED if open_attempts == 0 else None
    return QuorumPlan(state=waiting, replicas=step.wanted, requeue=step.requeue)


def apply_reputation(conn: Connection, verdict: Verdict) -> dict[str, dict[str, int]]:
    """Credit the nodes that agreed; count a disagreement against those that did not.

    A result accepted alone (trusted or reliable node, no other vote) validates nothing:
    only agreement between nodes earns credit.
    """
    change: dict[str, str] = {}
    if len(verdict.majority) > 1 or verdict.dissenting:
        change = {n: "credit" for n in verdict.majority}
    for v in verdict.dissenting:
        change[v.node_id] = "disagreements"
    if not change:
        return {}
    reps: dict[str, dict[str, int]] = {}
    for row in conn.execute(sa.select(nodes.c.id, nodes.c.reputation).where(nodes.c.id.in_(list(change)))):
        old = dict(row.reputation or {})
        what = change[row.id]
        reps[row.id] = credited(old) if what == "credit" else penalised(old, what)
    if reps:
        conn.execute(
            nodes.update()
            .where(nodes.c.id == sa.bindparam("n_id"))
            .values(reputation=sa.bindparam("n_rep", type_=sa.JSON)),
            [{"n_id": k, "n_rep": v} for k, v in reps.items()],
        )
    return reps


class QuorumRecords:
    """Reputation writes and distinct-placement reads (a mixin of :class:`phage.store.sql.SqlStore`)."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    async def penalise_node(self, node_id: str, counter: str) -> dict[str, int]:
        """Count a refusal against a node and start its clean run over; returns its counters."""
        return await self._update_reputation(node_id, lambda rep: penalised(rep, counter))

    async def credit_node(self, node_id: str) -> dict[str, int]:
        """A result of the node's passed validation: one more in its clean run; returns its counters."""
        return await self._update_reputation(node_id, credited)

    async def _update_reputation(
        self, node_id: str, change: Callable[[dict[str, int]], dict[str, int]]
    ) -> dict[str, int]:
        def op(conn: Connection) -> dict[str, int]:
            row = conn.execute(sa.select(nodes.c.reputation).where(nodes.c.id == node_id)).first()
            if row is None:
                raise NotFound(f"no node {node_id!r}", field="id")
            rep = change(dict(row.reputation or {}))
            conn.execute(nodes.update().where(nodes.c.id == node_id).values(reputation=rep))
            return rep

        return await self._writer.run(op)

    async def quorum_voters(self, task_ids: Sequence[str]) -> dict[str, set[str]]:
        """For each task, the nodes that voted on it or are running it (distinct placement)."""
        out: dict[str, set[str]] = {}
        async with self.engine.connect() as conn:
            for chunk in chunks(task_ids):
                q = sa.select(attempts.c.task_id, attempts.c.node_id).where(
                    attempts.c.task_id.in_(chunk),
                    sa.or_(
                        attempts.c.state.in_(OPEN),
                        sa.and_(attempts.c.state.in_(VOTED), attempts.c.error == ""),
                    ),
                )
                for r in await conn.execute(q):
                    out.setdefault(r.task_id, set()).add(r.node_id)
        return out
