"""The SQLAlchemy store: SQLite (WAL) by default, PostgreSQL for several coordinators.

Writes go through :class:`GroupCommitWriter` (its own thread, the sync driver);
reads use the async driver. Claims are compare-and-set updates (``WHERE state =
'queued'``) so two coordinators sharing a database can never hand one task out twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from phage.domain import Attempt, AttemptState, Task, TaskResult, TaskSpec, TaskState
from phage.domain.ids import new_id
from phage.domain.models import QueuedTask
from phage.domain.quorum import QuorumOutcome, Standing
from phage.domain.settle import Candidate, Counters, Next, choose, next_step
from phage.errors import Conflict, NotFound, PermissionDenied, PhageError, ProtocolError
from phage.store.base import FinishOutcome, LostOutcome, PageCursor
from phage.store.outage import reports_outages
from phage.store.rows import (
    ADVANCE_TASK,
    BUDGET,
    FINISH_ATTEMPT,
    LIVE,
    OPEN,
    WAITING,
    WANT_REPLICAS,
    Event,
    attempt_from_row,
    chunks,
    task_from_row,
    task_to_row,
)
from phage.store.schema import attempts, tasks
from phage.store.sql_nodes import NodeRecords
from phage.store.sql_quorum import QuorumRecords, plan_quorum
from phage.store.sql_replicas import ReplicaRecords
from phage.store.sql_retention import RetentionRecords
from phage.store.sql_training import TrainingRecords
from phage.store.sql_usage import UsageRecords
from phage.store.urls import database_urls, redact
from phage.store.writer import GroupCommitWriter

log = logging.getLogger("phage.store")

PG_TIMEOUT_S = 10.0
"""Longest a PostgreSQL connect or statement may take before the call fails instead of waiting."""


def sqlite_url(path: Path) -> str:
    """The async URL for a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


@reports_outages
class SqlStore(NodeRecords, UsageRecords, QuorumRecords, ReplicaRecords, TrainingRecords, RetentionRecords):
    """The coordinator's durable state over SQLAlchemy 2 async (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, synchronous: str = "NORMAL") -> None:
        self.url = url
        urls = database_urls(url)
        self.is_sqlite = not urls.postgres
        self.dsn = urls.dsn
        """PostgreSQL: the plain URL replica signals connect with (``store/signals.py``)."""
        if self.is_sqlite:
            read_kw: dict[str, Any] = {"connect_args": {"timeout": 30}}
            write_kw: dict[str, Any] = read_kw
        else:
            # pre_ping: after a PostgreSQL restart the pooled connections are dead; each is
            # tested before use and replaced, so the store recovers without a coordinator restart.
            # Timeouts bound every call, so an unreachable database fails a request, never hangs it.
            read_kw = {
                "pool_pre_ping": True,
                "connect_args": {"timeout": PG_TIMEOUT_S, "command_timeout": PG_TIMEOUT_S},
            }
            write_kw = {"pool_pre_ping": True, "pool_size": 1, "connect_args": {"connect_timeout": 5}}
        self.engine: AsyncEngine = create_async_engine(urls.async_url, **read_kw)
        """Reads: async, so they never block the event loop."""
        self.sync_engine: Engine = create_engine(urls.sync_url, **write_kw)
        """Writes: run by the group-commit writer's own thread."""
        if self.is_sqlite:
            self._install_sqlite_pragmas(self.engine.sync_engine, synchronous)
            self._install_sqlite_pragmas(self.sync_engine, synchronous)
        self._writer = GroupCommitWriter(self.sync_engine)

    @staticmethod
    def _install_sqlite_pragmas(engine: Engine, synchronous: str) -> None:
        # WAL lets readers proceed while the writer commits; NORMAL keeps every
        # commit across a process crash (kill -9), trading only power-loss safety.
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer (exposed for metrics)."""
        return self._writer

    async def open(self) -> None:
        """Apply migrations and start the writer."""
        from phage.store.migrate import upgrade

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)
        self._writer.start()
        log.info("store open: %s", redact(self.url))

    async def close(self) -> None:
        """Drain the writer and dispose of connections."""
        await self._writer.stop()
        await self.engine.dispose()

    # ---- tasks -------------------------------------------------------------

    async def add_tasks(self, new: Sequence[Task]) -> None:
        """Insert tasks in one transaction."""
        rows = [task_to_row(t) for t in new]

        def op(conn: Connection) -> None:
            conn.execute(tasks.insert(), rows)

        await self._writer.run(op)

    async def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(tasks.select().where(tasks.c.id == task_id))).first()
        return task_from_row(row) if row else None

    async def list_tasks(
        self,
        *,
        state: TaskState | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        before: float | None = None,
        after: PageCursor | None = None,
    ) -> list[Task]:
        """Newest first, filtered; ``after`` (the last row's cursor) continues a page (keyset)."""
        q = tasks.select().order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit)
        if state is not None:
            q = q.where(tasks.c.state == state.value)
        if kind is not None:
            q = q.where(tasks.c.kind == kind)
        if owner is not None:
            q = q.where(tasks.c.owner == owner)
        if before is not None:
            q = q.where(tasks.c.created_at < before)
        if after is not None:
            q = q.where(
                sa.or_(
                    tasks.c.created_at < after.created_at,
                    sa.and_(tasks.c.created_at == after.created_at, tasks.c.id < after.id),
                )
            )
        async with self.engine.connect() as conn:
            return [task_from_row(r) for r in await conn.execute(q)]

    async def count_open_tasks(self, owner: str) -> int:
        """Tasks of one key that are not finished yet (what a per-key quota counts)."""
        q = sa.select(sa.func.count()).where(
            tasks.c.owner == owner, tasks.c.state.not_in([s.value for s in TaskState if s.terminal])
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())

    async def count_tasks(self) -> dict[str, int]:
        """Tasks per state."""
        q = sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state)
        async with self.engine.connect() as conn:
            return {state: int(n) for state, n in await conn.execute(q)}

    async def queued_tasks(self) -> list[QueuedTask]:
        """Every task that wants another attempt (queued, or best-of-N short of its N), oldest first."""
        q = (
            sa.select(tasks.c.id, tasks.c.kind, tasks.c.priority, tasks.c.created_at, tasks.c.spec)
            .where(
                tasks.c.state.in_(LIVE),
                tasks.c.open_attempts + tasks.c.completed_attempts < tasks.c.replicas,
                tasks.c.attempts_made < BUDGET,
            )
            .order_by(tasks.c.created_at)
        )
        async with self.engine.connect() as conn:
            return [
                QueuedTask(r.id, r.kind, r.priority, r.created_at, TaskSpec.from_dict(r.spec))
                for r in await conn.execute(q)
            ]

    async def nodes_tried(self, task_ids: Sequence[str]) -> dict[str, set[str]]:
        """For each task, the nodes that have held an attempt of it (distinct-node placement)."""
        out: dict[str, set[str]] = {}
        async with self.engine.connect() as conn:
            for chunk in chunks(task_ids):
                q = sa.select(attempts.c.task_id, attempts.c.node_id).where(attempts.c.task_id.in_(chunk))
                for r in await conn.execute(q):
                    out.setdefault(r.task_id, set()).add(r.node_id)
        return out

    async def claim(self, node_id: str, task_ids: Sequence[str], now: float, lease_s: float) -> list[Attempt]:
        """Compare-and-set: one new attempt per task that still wants one."""
        return [a for a, _ in await self.claim_replicas(node_id, task_ids, now, lease_s)]

    async def claim_replicas(
        self, node_id: str, task_ids: Sequence[str], now: float, lease_s: float
    ) -> list[tuple[Attempt, bool]]:
        """Like :meth:`claim`; each attempt comes with whether its task wants still more attempts."""

        def op(conn: Connection) -> list[tuple[Attempt, bool]]:
            claimed: list[tuple[str, bool]] = []
            for chunk in chunks(task_ids):
                res = conn.execute(
                    tasks.update()
                    .where(
                        tasks.c.id.in_(chunk),
                        tasks.c.state.in_(LIVE),
                        tasks.c.open_attempts + tasks.c.completed_attempts < tasks.c.replicas,
                        tasks.c.attempts_made < BUDGET,
                    )
                    .values(
                        state=sa.case(
                            (tasks.c.state == TaskState.QUEUED.value, TaskState.DISPATCHED.value),
                            else_=tasks.c.state,
                        ),
                        open_attempts=tasks.c.open_attempts + 1,
                        attempts_made=tasks.c.attempts_made + 1,
                        updated_at=now,
                    )
                    .returning(
                        tasks.c.id,
                        tasks.c.open_attempts,
                        tasks.c.completed_attempts,
                        tasks.c.replicas,
                        tasks.c.attempts_made,
                        tasks.c.max_attempts,
                        tasks.c.min_quorum,
                    )
                )
                for r in res:
                    budget = r.max_attempts if r.min_quorum > 0 else r.max_attempts * r.replicas
                    more = r.open_attempts + r.completed_attempts < r.replicas and r.attempts_made < budget
                    claimed.append((r.id, more))
            made = [
                (
                    Attempt(
                        new_id("a"),
                        tid,
                        node_id,
                        AttemptState.DISPATCHED,
                        now,
                        lease_expires_at=now + lease_s,
                    ),
                    more,
                )
                for tid, more in claimed
            ]
            if made:
                conn.execute(
                    attempts.insert(),
                    [
                        {
                            "id": a.id,
                            "task_id": a.task_id,
                            "node_id": node_id,
                            "state": a.state.value,
                            "dispatched_at": now,
                            "started_at": None,
                            "finished_at": None,
                            "lease_expires_at": a.lease_expires_at,
                            "exit_code": None,
                            "error": "",
                            "result": None,
                        }
                        for a, _ in made
                    ],
                )
            return made

        return await self._writer.run(op)

    async def mark_running(self, node_id: str, attempt_ids: Sequence[str], now: float) -> list[str]:
        """dispatched → running for the node's own attempts; returns the ones no longer wanted."""

        def op(conn: Connection) -> list[str]:
            started: set[str] = set()
            task_ids: list[str] = []
            for chunk in chunks(attempt_ids):
                res = conn.execute(
                    attempts.update()
                    .where(
                        attempts.c.id.in_(chunk),
                        attempts.c.node_id == node_id,
                        attempts.c.state == AttemptState.DISPATCHED.value,
                    )
                    .values(state=AttemptState.RUNNING.value, started_at=now)
                    .returning(attempts.c.id, attempts.c.task_id)
                )
                for r in res:
                    started.add(r.id)
                    task_ids.append(r.task_id)
            for chunk in chunks(task_ids):
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id.in_(chunk), tasks.c.state.in_(WAITING))
                    .values(state=TaskState.RUNNING.value, updated_at=now)
                )
            return [a for a in attempt_ids if a not in started]

        return await self._writer.run(op)

    async def finish(self, node_id: str, attempt_id: str, result: TaskResult, now: float) -> FinishOutcome:
        """Record one result; raises for a foreign or unknown assignment."""
        (outcome,) = await self.finish_many(node_id, [(attempt_id, result)], now)
        if isinstance(outcome, PhageError):
            raise outcome
        return outcome

    async def finish_many(
        self,
        node_id: str,
        items: Sequence[tuple[str, TaskResult]],
        now: float,
        *,
        standing: Mapping[str, Standing] | None = None,
    ) -> list[FinishOutcome | PhageError]:
        """Record results and settle their tasks in one transaction, with bulk statements.

        Each item gets its own outcome: an accepted/duplicate :class:`FinishOutcome`, or
        the error that refuses it (unknown assignment, another node's assignment).
        ``standing``: per attempt id, how far a quorum job's result is believed alone
        (``domain/quorum.py``; absent: it needs a quorum).
        """

        def op(conn: Connection) -> list[FinishOutcome | PhageError]:
            ids = [aid for aid, _ in items]
            found: dict[str, Attempt] = {}
            for chunk in chunks(sorted(ids)):  # rows locked in one order everywhere: no deadlock
                q = attempts.select().where(attempts.c.id.in_(chunk))
                if not self.is_sqlite:
                    # another replica may be losing these attempts right now (its sweep, its liveness):
                    # lock them, so a result and a loss are decided one after the other, never both
                    q = q.with_for_update()
                for row in conn.execute(q):
                    found[row.id] = attempt_from_row(row)
            out: list[FinishOutcome | PhageError] = []
            events: list[Event] = []
            attempt_rows: list[dict[str, Any]] = []
            seen: set[str] = set()
            for aid, result in items:
                att = found.get(aid)
                if att is None:
                    out.append(ProtocolError(f"unknown assignment {aid!r}", field="assignment_id"))
                elif att.node_id != node_id:
                    out.append(
                        PermissionDenied(f"assignment {aid} belongs to another node", field="assignment_id")
                    )
                elif not att.state.open or aid in seen:
                    done = att.state in (AttemptState.SUCCEEDED, AttemptState.FAILED) or aid in seen
                    message = "result already recorded" if done else f"assignment was {att.state.value}"
                    out.append(FinishOutcome(done, True, None, message, task_id=att.task_id))
                else:
                    seen.add(aid)
                    ok = result.succeeded
                    stored = {**result.to_dict(), "attempt_id": aid}
                    attempt_rows.append(
                        {
                            "a_id": aid,
                            "a_state": (AttemptState.SUCCEEDED if ok else AttemptState.FAILED).value,
                            "a_finished": now,
                            "a_exit": result.exit_code,
                            "a_error": result.error,
                            "a_result": stored,
                        }
                    )
                    events.append(
                        Event(
                            len(out),
                            att.task_id,
                            aid,
                            completed=not result.error,
                            reason=result.error,
                            result=result,
                        )
                    )
                    out.append(FinishOutcome(True, False, None, task_id=att.task_id))
            if attempt_rows:
                conn.execute(FINISH_ATTEMPT, attempt_rows)
            verdicts: dict[str, QuorumOutcome] = {}
            for ev, (state, requeued, message) in self._advance(conn, events, now, standing, verdicts):
                out[ev.index] = FinishOutcome(
                    True,
                    False,
                    state,
                    message,
                    requeued=requeued,
                    task_id=ev.task_id,
                    quorum=verdicts.get(ev.task_id),
                )
            return out

        return await self._writer.run(op)

    async def fail_lost(self, attempt_ids: Sequence[str], reason: str, now: float) -> list[LostOutcome]:
        """Open attempts → lost; their tasks are offered again while the attempt budget lasts."""

        def op(conn: Connection) -> list[LostOutcome]:
            return self._lose_in(conn, attempt_ids, reason, now)

        return await self._writer.run(op)

    def _lose_in(
        self, conn: Connection, attempt_ids: Sequence[str], reason: str, now: float
    ) -> list[LostOutcome]:
        """Inside a write: open attempts → lost, and their tasks moved on."""
        events: list[Event] = []
        for chunk in chunks(sorted(attempt_ids)):  # lock order as in finish_many
            res = conn.execute(
                attempts.update()
                .where(attempts.c.id.in_(chunk), attempts.c.state.in_(OPEN))
                .values(state=AttemptState.LOST.value, finished_at=now, error=reason)
                .returning(attempts.c.id, attempts.c.task_id)
            )
            events.extend(Event(len(events), r.task_id, r.id, completed=False, reason=reason) for r in res)
        return [
            LostOutcome(ev.attempt_id, ev.task_id, state, requeued)
            for ev, (state, requeued, _) in self._advance(conn, events, now)
        ]

    def _advance(
        self,
        conn: Connection,
        events: list[Event],
        now: float,
        standing: Mapping[str, Standing] | None = None,
        verdicts: dict[str, QuorumOutcome] | None = None,
    ) -> list[tuple[Event, tuple[TaskState, bool, str]]]:
        """Account ended attempts against their tasks and move each task on (see domain.settle;
        quorum jobs with votes on record: domain.quorum, whose verdicts land in ``verdicts``)."""
        if not events:
            return []
        by_task: dict[str, list[Event]] = {}
        for ev in events:
            by_task.setdefault(ev.task_id, []).append(ev)
        rows: dict[str, Any] = {}
        for chunk in chunks(list(by_task)):
            q = sa.select(
                tasks.c.id,
                tasks.c.state,
                tasks.c.open_attempts,
                tasks.c.completed_attempts,
                tasks.c.replicas,
                tasks.c.attempts_made,
                tasks.c.max_attempts,
                tasks.c.cancel_requested,
                tasks.c.min_quorum,
            ).where(tasks.c.id.in_(chunk))
            if not self.is_sqlite:
                q = q.with_for_update()
            for r in conn.execute(q):
                rows[r.id] = r
        updates: list[dict[str, Any]] = []
        wanted: list[dict[str, Any]] = []
        decided: dict[str, tuple[TaskState, bool, str]] = {}
        for task_id, evs in by_task.items():
            row = rows.get(task_id)
            if row is None:
                continue
            state = TaskState(row.state)
            open_n = max(0, row.open_attempts - len(evs))
            done_n = row.completed_attempts + sum(1 for e in evs if e.completed)
            values: dict[str, Any] = {
                "t_id": task_id,
                "t_open": open_n,
                "t_done": done_n,
                "t_state": state.value,
                "t_result": None,
                "t_finished": None,
                "t_error": "",
                "t_updated": now,
            }
            if state.terminal:
                decided[task_id] = (state, False, f"task already {state.value}")
                values["t_state"] = state.value
                updates.append(values)
                continue
            quorum = row.min_quorum > 0
            budget = row.max_attempts if quorum else None
            counters = Counters(open_n, done_n, row.replicas, row.attempts_made, row.max_attempts, budget)
            plan = None
            if quorum and not row.cancel_requested:
                plan = plan_quorum(
                    conn,
                    task_id,
                    min_quorum=row.min_quorum,
                    open_attempts=open_n,
                    attempts_made=row.attempts_made,
                    max_attempts=row.max_attempts,
                    new=standing or {},
                )
            if plan is None:
                step = next_step(counters, completed_now=all(e.completed for e in evs), reason=evs[-1].reason)
            else:
                step = Next(requeue=plan.requeue)
            new_state = state
            if row.cancel_requested:
                new_state = TaskState.CANCELLED
            elif plan is not None:
                new_state = plan.state or state
                values["t_result"], values["t_error"] = plan.result, plan.error
                if plan.replicas is not None:
                    wanted.append({"w_id": task_id, "w_replicas": plan.replicas})
                if plan.outcome is not None and verdicts is not None:
                    verdicts[task_id] = plan.outcome
            elif step.settle:
                candidates = self._candidates(conn, task_id, evs, row.replicas, now)
                best, why = choose(candidates)
                if best is not None:
                    new_state = TaskState.VERIFIED
                    values["t_result"] = {**best.result.to_dict(), "attempt_id": best.attempt_id}
                else:
                    new_state = TaskState.FAILED
                    values["t_error"] = why
                    if len(candidates) == 1:
                        only = candidates[0]
                        values["t_result"] = {**only.result.to_dict(), "attempt_id": only.attempt_id}
            elif step.fail_reason:
                new_state, values["t_error"] = TaskState.FAILED, step.fail_reason
            elif step.waiting_state is not None:
                new_state = step.waiting_state
            if step.requeue and not new_state.terminal:
                values["t_error"] = evs[-1].reason
            if new_state.terminal:
                values["t_finished"] = now
            values["t_state"] = new_state.value
            updates.append(values)
            decided[task_id] = (new_state, step.requeue and not new_state.terminal, "")
        if updates:
            conn.execute(ADVANCE_TASK, updates)
        if wanted:
            conn.execute(WANT_REPLICAS, wanted)
        return [(ev, decided[ev.task_id]) for ev in events if ev.task_id in decided]

    def _candidates(
        self, conn: Connection, task_id: str, evs: list[Event], replicas: int, now: float
    ) -> list[Candidate]:
        """The completed attempts of a task (from this batch alone when it wants just one)."""
        if replicas == 1:
            return [
                Candidate(e.attempt_id, now, e.result) for e in evs if e.completed and e.result is not None
            ]
        q = attempts.select().where(
            attempts.c.task_id == task_id,
            attempts.c.state.in_((AttemptState.SUCCEEDED.value, AttemptState.FAILED.value)),
            attempts.c.error == "",
        )
        out = []
        for row in conn.execute(q):
            att = attempt_from_row(row)
            if att.result is not None:
                out.append(Candidate(att.id, att.finished_at or now, att.result))
        return out

    async def cancel_task(self, task_id: str, now: float) -> tuple[Task, list[Attempt]]:
        """Cancel unless already finished; returns the open attempts to stop."""

        def op(conn: Connection) -> tuple[Task, list[Attempt]]:
            row = (conn.execute(tasks.select().where(tasks.c.id == task_id))).first()
            if row is None:
                raise NotFound(f"no task {task_id!r}", field="id")
            task = task_from_row(row)
            if task.state in (TaskState.VERIFIED, TaskState.FAILED):
                raise Conflict(f"task {task_id} already {task.state.value}; nothing to cancel")
            if task.state is TaskState.CANCELLED:
                return task, []
            open_rows = conn.execute(
                attempts.update()
                .where(attempts.c.task_id == task_id, attempts.c.state.in_(OPEN))
                .values(state=AttemptState.CANCELLED.value, finished_at=now, error="cancelled")
                .returning(*attempts.c)
            )
            stopped = [attempt_from_row(r) for r in open_rows]
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id)
                .values(
                    state=TaskState.CANCELLED.value,
                    cancel_requested=True,
                    finished_at=now,
                    updated_at=now,
                    error="cancelled by request",
                    open_attempts=0,
                )
            )
            task.state, task.cancel_requested, task.finished_at = TaskState.CANCELLED, True, now
            return task, stopped

        return await self._writer.run(op)

    async def attempts_for(self, task_id: str) -> list[Attempt]:
        """A task's attempts, oldest first."""
        q = attempts.select().where(attempts.c.task_id == task_id).order_by(attempts.c.dispatched_at)
        async with self.engine.connect() as conn:
            return [attempt_from_row(r) for r in await conn.execute(q)]

    async def open_attempts(self) -> list[Attempt]:
        """Every attempt that still holds a lease."""
        q = attempts.select().where(attempts.c.state.in_(OPEN))
        async with self.engine.connect() as conn:
            return [attempt_from_row(r) for r in await conn.execute(q)]
