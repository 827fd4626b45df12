"""What coordinator replicas on one database read and sweep (a mixin of :class:`phage.store.sql.SqlStore`).

A replica learns from a signal (``store/signals.py``) that tasks were queued or
requeued elsewhere and reads them here; the leader replica sweeps for nodes that
stopped heartbeating to *any* replica and for leases nobody renewed (a replica
killed mid-run leaves both behind), so each is handled exactly once. Heartbeats
and lease renewals reach the store within a second of arriving at whichever
replica a node talks to, which is what makes the sweep's view true.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.domain import Attempt, NodeState, Task, TaskSpec
from phage.domain.models import QueuedTask
from phage.store.base import LostOutcome
from phage.store.rows import BUDGET, LIVE, OPEN, attempt_from_row, chunks, task_from_row
from phage.store.schema import attempts, nodes, tasks
from phage.store.writer import GroupCommitWriter


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one liveness sweep changed."""

    dead_nodes: list[str]
    lost: list[LostOutcome]


class ReplicaRecords:
    """Reads and sweeps for several coordinators on one database."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    def _lose_in(
        self, conn: Connection, attempt_ids: Sequence[str], reason: str, now: float
    ) -> list[LostOutcome]:
        raise NotImplementedError  # provided by SqlStore

    async def queued_by_ids(self, task_ids: Sequence[str]) -> list[QueuedTask]:
        """Those of ``task_ids`` that still want an attempt (as :meth:`queued_tasks` would list them)."""
        out: list[QueuedTask] = []
        async with self.engine.connect() as conn:
            for chunk in chunks(task_ids):
                q = sa.select(
                    tasks.c.id, tasks.c.kind, tasks.c.priority, tasks.c.created_at, tasks.c.spec
                ).where(
                    tasks.c.id.in_(chunk),
                    tasks.c.state.in_(LIVE),
                    tasks.c.open_attempts + tasks.c.completed_attempts < tasks.c.replicas,
                    tasks.c.attempts_made < BUDGET,
                )
                out.extend(
                    QueuedTask(r.id, r.kind, r.priority, r.created_at, TaskSpec.from_dict(r.spec))
                    for r in await conn.execute(q)
                )
        return sorted(out, key=lambda t: t.created_at)

    async def open_attempts_of(self, node_id: str) -> list[tuple[Attempt, Task]]:
        """A node's open attempts with their tasks: what a replica takes over when the node moves to it."""
        mine = attempts.select().where(attempts.c.node_id == node_id, attempts.c.state.in_(OPEN))
        out: list[tuple[Attempt, Task]] = []
        async with self.engine.connect() as conn:
            for row in (await conn.execute(mine)).all():
                att = attempt_from_row(row)
                task_row = (await conn.execute(tasks.select().where(tasks.c.id == att.task_id))).first()
                if task_row is not None:
                    out.append((att, task_from_row(task_row)))
        return out

    async def sweep_stale(
        self, now: float, *, silent_since: float, lease_ended_by: float, skip: Sequence[str] = ()
    ) -> Sweep:
        """Online nodes last heard before ``silent_since`` → dead, their open attempts lost; and every
        open attempt whose lease ended before ``lease_ended_by`` lost. Tasks are requeued as budgets allow.

        ``skip``: nodes the sweeping replica judges itself (they talk to it), left out with their attempts.
        """
        skipped = set(skip)

        def op(conn: Connection) -> Sweep:
            # the silent are few: find them, leave out the sweeper's own nodes here rather than in SQL
            # (a NOT IN over thousands of ids made every sweep a heavy statement), then bury them
            silent = [
                r.id
                for r in conn.execute(
                    sa.select(nodes.c.id).where(
                        nodes.c.state == NodeState.ONLINE.value, nodes.c.last_heartbeat < silent_since
                    )
                )
                if r.id not in skipped
            ]
            dead = [
                r.id
                for chunk in chunks(silent)
                for r in conn.execute(
                    nodes.update()
                    .where(
                        nodes.c.id.in_(chunk),
                        nodes.c.state == NodeState.ONLINE.value,
                        nodes.c.last_heartbeat < silent_since,
                    )
                    .values(state=NodeState.DEAD.value)
                    .returning(nodes.c.id)
                )
            ]
            lost: list[LostOutcome] = []
            if dead:
                orphaned = [
                    r.id
                    for chunk in chunks(dead)
                    for r in conn.execute(
                        sa.select(attempts.c.id).where(
                            attempts.c.node_id.in_(chunk), attempts.c.state.in_(OPEN)
                        )
                    )
                ]
                lost += self._lose_in(conn, orphaned, "node stopped sending heartbeats", now)
            lapsed = [
                r.id
                for r in conn.execute(
                    sa.select(attempts.c.id, attempts.c.node_id).where(
                        attempts.c.state.in_(OPEN), attempts.c.lease_expires_at < lease_ended_by
                    )
                )
                if r.node_id not in skipped
            ]
            lost += self._lose_in(conn, lapsed, "assignment lease expired", now)
            return Sweep(dead, lost)

        return await self._writer.run(op)
