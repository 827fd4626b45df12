"""Row shapes of the SQL store: converters, bulk statements and small helpers shared by its modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from phage.domain import (
    Attempt,
    AttemptState,
    Node,
    NodeState,
    Task,
    TaskKind,
    TaskResult,
    TaskSpec,
    TaskState,
)
from phage.store.schema import attempts, tasks

OPEN = (AttemptState.DISPATCHED.value, AttemptState.RUNNING.value)
CHUNK = 400  # stay under SQLite's bound-parameter limit


LIVE = (TaskState.QUEUED.value, TaskState.DISPATCHED.value, TaskState.RUNNING.value)
WAITING = (TaskState.QUEUED.value, TaskState.DISPATCHED.value)
BUDGET = sa.case(
    (tasks.c.min_quorum > 0, tasks.c.max_attempts), else_=tasks.c.max_attempts * tasks.c.replicas
)
"""Executions a task may have in all: ``max_attempts`` per wanted result (best-of-N), but a quorum
job's ``max_attempts`` caps every execution, however many copies its quorum asked for."""
FINISH_ATTEMPT = (
    attempts.update()
    .where(attempts.c.id == sa.bindparam("a_id"))
    .values(
        state=sa.bindparam("a_state"),
        finished_at=sa.bindparam("a_finished"),
        exit_code=sa.bindparam("a_exit"),
        error=sa.bindparam("a_error"),
        result=sa.bindparam("a_result", type_=sa.JSON),
    )
)
ADVANCE_TASK = (
    tasks.update()
    .where(tasks.c.id == sa.bindparam("t_id"))
    .values(
        state=sa.bindparam("t_state"),
        open_attempts=sa.bindparam("t_open"),
        completed_attempts=sa.bindparam("t_done"),
        result=sa.bindparam("t_result", type_=sa.JSON),
        finished_at=sa.bindparam("t_finished"),
        error=sa.bindparam("t_error"),
        updated_at=sa.bindparam("t_updated"),
    )
)

WANT_REPLICAS = (
    tasks.update().where(tasks.c.id == sa.bindparam("w_id")).values(replicas=sa.bindparam("w_replicas"))
)
"""A quorum job asks for more copies: results wanted in all."""


@dataclass(frozen=True, slots=True)
class Event:
    """An attempt that ended, to be accounted against its task."""

    index: int
    task_id: str
    attempt_id: str
    completed: bool
    """It yielded a verdict (as opposed to a node failure or loss)."""
    reason: str = ""
    result: TaskResult | None = None


def chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def task_from_row(row: Row[Any]) -> Task:
    m = row._mapping
    return Task(
        id=m["id"],
        kind=TaskKind(m["kind"]),
        state=TaskState(m["state"]),
        spec=TaskSpec.from_dict(m["spec"]),
        priority=m["priority"],
        max_attempts=m["max_attempts"],
        attempts_made=m["attempts_made"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        finished_at=m["finished_at"],
        owner=m["owner"],
        result=TaskResult.from_dict(m["result"]) if m["result"] else None,
        error=m["error"],
        cancel_requested=bool(m["cancel_requested"]),
        labels=m["labels"] or {},
        replicas=m["replicas"],
        open_attempts=m["open_attempts"],
        completed_attempts=m["completed_attempts"],
        min_quorum=m["min_quorum"],
    )


def attempt_from_row(row: Row[Any]) -> Attempt:
    m = row._mapping
    return Attempt(
        id=m["id"],
        task_id=m["task_id"],
        node_id=m["node_id"],
        state=AttemptState(m["state"]),
        dispatched_at=m["dispatched_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        lease_expires_at=m["lease_expires_at"],
        exit_code=m["exit_code"],
        error=m["error"],
        result=TaskResult.from_dict(m["result"]) if m["result"] else None,
    )


def node_from_row(row: Row[Any]) -> Node:
    m = row._mapping
    return Node(
        id=m["id"],
        name=m["name"],
        state=NodeState(m["state"]),
        registered_at=m["registered_at"],
        last_heartbeat=m["last_heartbeat"],
        max_concurrency=m["max_concurrency"],
        hardware=m["hardware"] or {},
        sandboxes=list(m["sandboxes"] or []),
        loaded_model=m["loaded_model"],
        version=m["version"],
        cert_serial=m["cert_serial"],
        trusted=bool(m["trusted"]),
        quarantined=bool(m["quarantined"]),
        quarantine_reason=m["quarantine_reason"],
        reputation=dict(m["reputation"] or {}),
        draining=bool(m["draining"]),
        max_jobs=m["max_jobs"],
    )


def task_to_row(t: Task) -> dict[str, Any]:
    return {
        "id": t.id,
        "kind": t.kind.value,
        "state": t.state.value,
        "priority": t.priority,
        "spec": t.spec.to_dict(),
        "max_attempts": t.max_attempts,
        "attempts_made": t.attempts_made,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "finished_at": t.finished_at,
        "owner": t.owner,
        "result": t.result.to_dict() if t.result else None,
        "error": t.error,
        "cancel_requested": t.cancel_requested,
        "labels": t.labels,
        "replicas": t.replicas,
        "open_attempts": t.open_attempts,
        "completed_attempts": t.completed_attempts,
        "min_quorum": t.min_quorum,
    }
