"""The SQL store on real SQLite and PostgreSQL: compare-and-set claims, idempotent results, durability."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from phage.domain import Node, NodeState, Task, TaskKind, TaskResult, TaskSpec, TaskState
from phage.errors import Conflict, PermissionDenied, ProtocolError
from phage.store import SqlStore
from phage.store.blobs import BlobStore


def _task(tid: str, **kw: object) -> Task:
    return Task(
        id=tid,
        kind=TaskKind.NOOP,
        state=TaskState.QUEUED,
        spec=TaskSpec(),
        created_at=1.0,
        updated_at=1.0,
        **kw,
    )  # type: ignore[arg-type]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(database_url)
    await s.open()
    yield s
    await s.close()


async def test_claim_is_compare_and_set(store: SqlStore) -> None:
    await store.add_tasks([_task("t1")])
    first = await store.claim("node-a", ["t1"], 2.0, 30)
    second = await store.claim("node-b", ["t1"], 2.0, 30)
    assert [a.task_id for a in first] == ["t1"] and second == []
    task = await store.get_task("t1")
    assert task is not None and task.state is TaskState.DISPATCHED and task.attempts_made == 1


async def test_results_are_idempotent_and_owned(store: SqlStore) -> None:
    await store.add_tasks([_task("t1")])
    (att,) = await store.claim("node-a", ["t1"], 2.0, 30)
    with pytest.raises(PermissionDenied):
        await store.finish("node-b", att.id, TaskResult(exit_code=0), 3.0)
    with pytest.raises(ProtocolError):
        await store.finish("node-a", "a-unknown", TaskResult(exit_code=0), 3.0)
    done = await store.finish("node-a", att.id, TaskResult(exit_code=0), 3.0)
    assert done.accepted and not done.duplicate and done.task_state is TaskState.VERIFIED
    again = await store.finish("node-a", att.id, TaskResult(exit_code=0), 4.0)
    assert again.duplicate and again.accepted


async def test_lost_attempts_requeue_until_the_budget_is_spent(store: SqlStore) -> None:
    await store.add_tasks([_task("t1", max_attempts=2)])
    (a1,) = await store.claim("n", ["t1"], 1.0, 30)
    (out,) = await store.fail_lost([a1.id], "node died", 2.0)
    assert out.requeued and out.task_state is TaskState.QUEUED
    (a2,) = await store.claim("n", ["t1"], 3.0, 30)
    (out,) = await store.fail_lost([a2.id], "node died", 4.0)
    assert not out.requeued and out.task_state is TaskState.FAILED
    task = await store.get_task("t1")
    assert task is not None and "node died" in task.error
    assert [a.state.value for a in await store.attempts_for("t1")] == ["lost", "lost"]


async def test_a_job_that_exits_nonzero_fails_but_a_node_error_is_retried(store: SqlStore) -> None:
    await store.add_tasks([_task("bad"), _task("flaky")])
    (a,) = await store.claim("n", ["bad"], 1.0, 30)
    assert (await store.finish("n", a.id, TaskResult(exit_code=3), 2.0)).task_state is TaskState.FAILED
    (b,) = await store.claim("n", ["flaky"], 1.0, 30)
    out = await store.finish("n", b.id, TaskResult(exit_code=-1, error="could not unpack"), 2.0)
    assert out.requeued and out.task_state is TaskState.QUEUED


async def test_cancel_returns_open_attempts_and_refuses_finished_tasks(store: SqlStore) -> None:
    await store.add_tasks([_task("t1"), _task("t2")])
    (a,) = await store.claim("n", ["t1"], 1.0, 30)
    task, stopped = await store.cancel_task("t1", 2.0)
    assert task.state is TaskState.CANCELLED and [s.id for s in stopped] == [a.id]
    late = await store.finish("n", a.id, TaskResult(exit_code=0), 3.0)
    assert late.duplicate and not late.accepted
    (b,) = await store.claim("n", ["t2"], 1.0, 30)
    await store.finish("n", b.id, TaskResult(exit_code=0), 2.0)
    with pytest.raises(Conflict):
        await store.cancel_task("t2", 3.0)


async def test_everything_survives_reopening(database_url: str) -> None:
    url = database_url
    s = SqlStore(url)
    await s.open()
    await s.add_tasks([_task("t1"), _task("t2")])
    await s.claim("n", ["t1"], 1.0, 30)
    now = 5.0
    await s.upsert_node(Node(id="n", name="n", state=NodeState.ONLINE, registered_at=now, last_heartbeat=now))
    await s.close()
    again = SqlStore(url)
    await again.open()
    assert [t.id for t in await again.queued_tasks()] == ["t2"]
    assert [a.task_id for a in await again.open_attempts()] == ["t1"]
    node = await again.get_node("n")
    assert node is not None and node.state is NodeState.ONLINE
    await again.close()


def test_blob_store_checks_digests_and_limits(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    digest = blobs.put(b"hello")
    assert blobs.read(digest) == b"hello" and blobs.size(digest) == 5
    writer = blobs.writer(limit=4)
    with pytest.raises(Exception, match="limit"):
        writer.write(b"hello")
    w2 = blobs.writer(limit=100)
    w2.write(b"data")
    with pytest.raises(Exception, match="declared"):
        w2.commit("0" * 64)
    assert not any((tmp_path / "blobs" / "tmp").iterdir())
