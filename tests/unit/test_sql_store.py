"""SqlStore against real SQLite and PostgreSQL: compare-and-set claims, results settle once, nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from phage.domain import (
    AttemptState,
    JobManifest,
    OutputFile,
    Task,
    TaskKind,
    TaskResult,
    TaskSpec,
    TaskState,
)
from phage.domain.ids import new_id
from phage.errors import Conflict, NotFound, PermissionDenied, ProtocolError
from phage.store import SqlStore

NOW = 1_000_000.0
LEASE = 30.0


def make_task(
    *, priority: int = 0, max_attempts: int = 3, created_at: float = NOW, kind: TaskKind = TaskKind.JOB
) -> Task:
    return Task(
        id=new_id("t"),
        kind=kind,
        state=TaskState.QUEUED,
        spec=TaskSpec(manifest=JobManifest("main.py")),
        priority=priority,
        max_attempts=max_attempts,
        created_at=created_at,
        updated_at=created_at,
        owner="k-test",
        labels={"suite": "unit"},
    )


def ok(exit_code: int = 0) -> TaskResult:
    return TaskResult(
        exit_code=exit_code,
        outputs=[OutputFile("out/result.txt", "a" * 64, 3)],
        stdout_tail="done\n",
        wall_time_s=0.25,
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(database_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_add_and_read_tasks(store: SqlStore) -> None:
    old = make_task(created_at=NOW - 10, priority=2)
    new = make_task(created_at=NOW)
    await store.add_tasks([old, new])
    got = await store.get_task(old.id)
    assert got is not None
    assert (got.state, got.priority, got.owner, got.labels) == (
        TaskState.QUEUED,
        2,
        "k-test",
        {"suite": "unit"},
    )
    assert got.spec == old.spec
    assert [t.id for t in await store.list_tasks()] == [new.id, old.id]  # newest first
    assert [t.id for t in await store.list_tasks(before=NOW)] == [old.id]
    assert [q.id for q in await store.queued_tasks()] == [old.id, new.id]  # oldest first
    assert await store.count_tasks() == {"queued": 2}
    assert await store.get_task("t-missing") is None


async def test_claim_is_compare_and_set(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    first = await store.claim("node-a", [task.id], NOW, LEASE)
    assert len(first) == 1
    att = first[0]
    assert (att.task_id, att.node_id, att.state) == (task.id, "node-a", AttemptState.DISPATCHED)
    assert att.lease_expires_at == NOW + LEASE
    # the same task again, by the same or another node: nothing
    assert await store.claim("node-a", [task.id], NOW + 1, LEASE) == []
    assert await store.claim("node-b", [task.id], NOW + 1, LEASE) == []
    got = await store.get_task(task.id)
    assert got is not None
    assert (got.state, got.attempts_made, got.open_attempts) == (TaskState.DISPATCHED, 1, 1)
    assert [a.id for a in await store.attempts_for(task.id)] == [att.id]
    assert await store.queued_tasks() == []


async def test_concurrent_claims_hand_a_task_out_once(store: SqlStore) -> None:
    tasks = [make_task() for _ in range(20)]
    await store.add_tasks(tasks)
    ids = [t.id for t in tasks]
    results = await asyncio.gather(*(store.claim(f"node-{i}", ids, NOW, LEASE) for i in range(8)))
    claimed = [a.task_id for batch in results for a in batch]
    assert sorted(claimed) == sorted(ids)  # every task exactly once across all nodes
    for t in tasks:
        assert len(await store.attempts_for(t.id)) == 1


async def test_claim_skips_unknown_and_finished_tasks(store: SqlStore) -> None:
    done, fresh = make_task(), make_task()
    await store.add_tasks([done, fresh])
    (att,) = await store.claim("node-a", [done.id], NOW, LEASE)
    await store.finish("node-a", att.id, ok(), NOW + 1)
    got = await store.claim("node-b", ["t-nope", done.id, fresh.id], NOW + 2, LEASE)
    assert [a.task_id for a in got] == [fresh.id]


async def test_finish_records_the_result_and_verifies(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    assert await store.mark_running("node-a", [att.id], NOW + 1) == []
    running = await store.get_task(task.id)
    assert running is not None and running.state is TaskState.RUNNING
    outcome = await store.finish("node-a", att.id, ok(), NOW + 2)
    assert outcome.accepted and not outcome.duplicate
    assert outcome.task_state is TaskState.VERIFIED
    assert outcome.task_id == task.id
    got = await store.get_task(task.id)
    assert got is not None
    assert got.state is TaskState.VERIFIED
    assert got.finished_at == NOW + 2
    assert got.result is not None
    assert got.result.attempt_id == att.id
    assert got.result.outputs == [OutputFile("out/result.txt", "a" * 64, 3)]
    (stored,) = await store.attempts_for(task.id)
    assert (stored.state, stored.exit_code, stored.started_at) == (AttemptState.SUCCEEDED, 0, NOW + 1)
    assert await store.open_attempts() == []


async def test_a_failing_job_fails_without_retrying(store: SqlStore) -> None:
    task = make_task(max_attempts=3)
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    outcome = await store.finish("node-a", att.id, ok(exit_code=2), NOW + 1)
    assert outcome.task_state is TaskState.FAILED
    assert not outcome.requeued
    got = await store.get_task(task.id)
    assert got is not None and got.state is TaskState.FAILED
    assert "2" in got.error
    assert await store.queued_tasks() == []


async def test_finish_of_another_nodes_assignment_is_refused(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    with pytest.raises(PermissionDenied) as exc:
        await store.finish("node-b", att.id, ok(), NOW + 1)
    assert exc.value.field == "assignment_id"
    got = await store.get_task(task.id)
    assert got is not None and got.state is TaskState.DISPATCHED and got.result is None
    # the rightful node can still report
    assert (await store.finish("node-a", att.id, ok(), NOW + 2)).task_state is TaskState.VERIFIED


async def test_finish_of_an_unknown_assignment_is_a_protocol_error(store: SqlStore) -> None:
    with pytest.raises(ProtocolError) as exc:
        await store.finish("node-a", "a-never-issued", ok(), NOW)
    assert exc.value.field == "assignment_id"


async def test_finishing_twice_is_a_duplicate(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    first = await store.finish("node-a", att.id, ok(), NOW + 1)
    second = await store.finish("node-a", att.id, ok(exit_code=1), NOW + 2)
    assert not first.duplicate
    assert second.duplicate and second.accepted
    assert second.task_state is None
    got = await store.get_task(task.id)
    assert got is not None
    assert got.state is TaskState.VERIFIED  # the replay changed nothing
    assert got.result is not None and got.result.exit_code == 0
    assert got.finished_at == NOW + 1


async def test_the_same_result_twice_in_one_batch_counts_once(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    first, second = await store.finish_many("node-a", [(att.id, ok()), (att.id, ok())], NOW + 1)
    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    assert first.task_state is TaskState.VERIFIED and not first.duplicate
    assert second.duplicate


async def test_fail_lost_requeues_until_max_attempts_then_fails(store: SqlStore) -> None:
    task = make_task(max_attempts=2)
    await store.add_tasks([task])

    (a1,) = await store.claim("node-a", [task.id], NOW, LEASE)
    (lost,) = await store.fail_lost([a1.id], "node node-a died", NOW + 1)
    assert (lost.attempt_id, lost.task_id, lost.task_state, lost.requeued) == (
        a1.id,
        task.id,
        TaskState.QUEUED,
        True,
    )
    assert [q.id for q in await store.queued_tasks()] == [task.id]
    requeued = await store.get_task(task.id)
    assert requeued is not None and requeued.error == "node node-a died"

    (a2,) = await store.claim("node-b", [task.id], NOW + 2, LEASE)
    (lost,) = await store.fail_lost([a2.id], "lease lapsed", NOW + 3)
    assert (lost.task_state, lost.requeued) == (TaskState.FAILED, False)

    got = await store.get_task(task.id)
    assert got is not None
    assert got.state is TaskState.FAILED
    assert "lease lapsed" in got.error and "2 of 2" in got.error
    assert got.attempts_made == 2
    assert await store.claim("node-c", [task.id], NOW + 4, LEASE) == []
    assert await store.queued_tasks() == []
    assert [a.state for a in await store.attempts_for(task.id)] == [AttemptState.LOST, AttemptState.LOST]


async def test_fail_lost_ignores_attempts_already_ended(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    await store.finish("node-a", att.id, ok(), NOW + 1)
    assert await store.fail_lost([att.id, "a-unknown"], "late", NOW + 2) == []
    got = await store.get_task(task.id)
    assert got is not None and got.state is TaskState.VERIFIED


async def test_a_result_after_the_attempt_was_lost_is_a_duplicate(store: SqlStore) -> None:
    task = make_task(max_attempts=2)
    await store.add_tasks([task])
    (a1,) = await store.claim("node-a", [task.id], NOW, LEASE)
    await store.fail_lost([a1.id], "lease lapsed", NOW + 1)
    (a2,) = await store.claim("node-b", [task.id], NOW + 2, LEASE)
    late = await store.finish("node-a", a1.id, ok(exit_code=1), NOW + 3)
    assert late.duplicate and not late.accepted  # the lost attempt's word no longer counts
    assert (await store.finish("node-b", a2.id, ok(), NOW + 4)).task_state is TaskState.VERIFIED


async def test_cancel_returns_the_open_attempts(store: SqlStore) -> None:
    task, other = make_task(), make_task()
    await store.add_tasks([task, other])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    await store.mark_running("node-a", [att.id], NOW + 1)

    cancelled, stopped = await store.cancel_task(task.id, NOW + 2)
    assert cancelled.state is TaskState.CANCELLED
    assert [(a.id, a.node_id, a.state) for a in stopped] == [(att.id, "node-a", AttemptState.CANCELLED)]
    got = await store.get_task(task.id)
    assert got is not None
    assert (got.state, got.cancel_requested, got.open_attempts) == (TaskState.CANCELLED, True, 0)
    assert await store.open_attempts() == []
    # the node's late result changes nothing
    late = await store.finish("node-a", att.id, ok(), NOW + 3)
    assert late.duplicate and not late.accepted
    again = await store.get_task(task.id)
    assert again is not None and again.state is TaskState.CANCELLED
    # cancelling again is a no-op; the other task was untouched
    again_task, again_stopped = await store.cancel_task(task.id, NOW + 4)
    assert again_task.state is TaskState.CANCELLED and again_stopped == []
    untouched = await store.get_task(other.id)
    assert untouched is not None and untouched.state is TaskState.QUEUED


async def test_cancel_of_a_queued_task_returns_no_attempts(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    cancelled, stopped = await store.cancel_task(task.id, NOW)
    assert cancelled.state is TaskState.CANCELLED and stopped == []
    assert await store.claim("node-a", [task.id], NOW + 1, LEASE) == []


async def test_cancel_of_a_finished_or_missing_task_is_refused(store: SqlStore) -> None:
    task = make_task()
    await store.add_tasks([task])
    (att,) = await store.claim("node-a", [task.id], NOW, LEASE)
    await store.finish("node-a", att.id, ok(), NOW + 1)
    with pytest.raises(Conflict):
        await store.cancel_task(task.id, NOW + 2)
    with pytest.raises(NotFound) as exc:
        await store.cancel_task("t-missing", NOW)
    assert exc.value.field == "id"


async def test_everything_survives_closing_and_reopening(database_url: str) -> None:
    first = SqlStore(database_url)
    await first.open()
    done, running, queued = make_task(), make_task(created_at=NOW + 1), make_task(created_at=NOW + 2)
    await first.add_tasks([done, running, queued])
    (a_done,) = await first.claim("node-a", [done.id], NOW, LEASE)
    (a_run,) = await first.claim("node-b", [running.id], NOW, LEASE)
    await first.mark_running("node-b", [a_run.id], NOW + 1)
    await first.finish("node-a", a_done.id, ok(), NOW + 2)
    await first.close()

    second = SqlStore(database_url)
    await second.open()  # migrations run again on an up-to-date schema: a no-op
    try:
        got = await second.get_task(done.id)
        assert got is not None and got.state is TaskState.VERIFIED
        assert got.result is not None and got.result.attempt_id == a_done.id
        assert got.result.stdout_tail == "done\n"
        still = await second.get_task(running.id)
        assert still is not None and still.state is TaskState.RUNNING
        assert [a.id for a in await second.open_attempts()] == [a_run.id]
        assert [q.id for q in await second.queued_tasks()] == [queued.id]
        assert await second.count_tasks() == {"verified": 1, "running": 1, "queued": 1}
        # and the reopened store keeps working: the queued task can be claimed exactly once
        assert len(await second.claim("node-c", [queued.id], NOW + 3, LEASE)) == 1
        assert await second.claim("node-d", [queued.id], NOW + 3, LEASE) == []
    finally:
        await second.close()
