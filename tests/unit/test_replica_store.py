"""What replicas on one database share: signals (LISTEN/NOTIFY), one leader, and the leader's sweep."""

from __future__ import annotations

import time

import pytest

from phage.domain import Node, NodeState, Task, TaskKind, TaskSpec, TaskState
from phage.store import SqlStore
from phage.store.signals import PostgresSignals, Signal
from phage.testing import eventually
from phage.testing_postgres import PostgresServer
from tests.conftest import selected_backends

NOW = 1_000.0
LEASE = 30.0


def _task(tid: str, created: float = NOW) -> Task:
    return Task(
        id=tid,
        kind=TaskKind.NOOP,
        state=TaskState.QUEUED,
        spec=TaskSpec(),
        created_at=created,
        updated_at=created,
    )


def _node(node_id: str, heard: float) -> Node:
    return Node(id=node_id, name=node_id, state=NodeState.ONLINE, registered_at=1, last_heartbeat=heard)


async def test_the_sweep_buries_silent_nodes_and_lapsed_leases_once(sql_store: SqlStore) -> None:
    store = sql_store
    await store.add_tasks([_task("t-silent"), _task("t-lapsed"), _task("t-fine")])
    await store.upsert_node(_node("silent", heard=NOW - 100))
    await store.upsert_node(_node("alive", heard=NOW))
    (on_silent,) = await store.claim("silent", ["t-silent"], NOW - 100, LEASE)
    (lapsed,) = await store.claim("alive", ["t-lapsed"], NOW - 100, LEASE)  # lease ended at NOW - 70
    (fine,) = await store.claim("alive", ["t-fine"], NOW, LEASE)

    sweep = await store.sweep_stale(NOW, silent_since=NOW - 10, lease_ended_by=NOW - 10)
    assert sweep.dead_nodes == ["silent"]
    assert {(o.attempt_id, o.requeued) for o in sweep.lost} == {(on_silent.id, True), (lapsed.id, True)}
    silent = await store.get_node("silent")
    assert silent is not None and silent.state is NodeState.DEAD
    assert [a.id for a in await store.open_attempts()] == [fine.id]
    assert {q.id for q in await store.queued_by_ids(["t-silent", "t-lapsed", "t-fine"])} == {
        "t-silent",
        "t-lapsed",
    }
    assert [(a.id, t.id) for a, t in await store.open_attempts_of("alive")] == [(fine.id, "t-fine")]
    assert await store.open_attempts_of("silent") == []
    again = await store.sweep_stale(NOW, silent_since=NOW - 10, lease_ended_by=NOW - 10)
    assert again.dead_nodes == [] and again.lost == []
    # a node the sweeping replica judges itself is left to it, with its assignments
    await store.upsert_node(_node("mine", heard=NOW - 100))
    await store.add_tasks([_task("t-mine")])
    await store.claim("mine", ["t-mine"], NOW - 100, LEASE)
    again = await store.sweep_stale(NOW, silent_since=NOW - 10, lease_ended_by=NOW - 10, skip=["mine"])
    assert again.dead_nodes == [] and again.lost == []


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    if "postgresql" not in selected_backends():
        pytest.skip("PHAGE_TEST_DB leaves PostgreSQL out")
    return postgres_server.create_database()


async def test_signals_reach_every_other_replica_and_one_leads(pg_url: str) -> None:
    a, b, c = PostgresSignals(pg_url, retry_s=0.1), PostgresSignals(pg_url, retry_s=0.1), None
    got: dict[str, list[Signal]] = {"a": [], "b": []}
    await a.start(got["a"].append)
    await b.start(got["b"].append)
    try:
        await a.publish("event", event={"type": "task", "id": "t1"})
        await eventually(lambda: len(got["b"]) == 1)
        assert got["b"][0].kind == "event" and got["b"][0].origin == a.replica_id
        assert got["a"] == [], "a replica does not hear itself"

        many = [f"t-{i:06d}-{'x' * 30}" for i in range(1000)]  # ~40 kB: several notifications
        await b.publish_ids("queued", many)
        await eventually(lambda: sum(len(s.data["ids"]) for s in got["a"]) == len(many))
        assert [i for s in got["a"] for i in s.data["ids"]] == many

        assert [a.leader, b.leader].count(True) == 1
        leader, other = (a, b) if a.leader else (b, a)
        await leader.stop()  # as a killed replica's connection closes, the lock goes with it
        await eventually(lambda: other.leader)
        c = PostgresSignals(pg_url, retry_s=0.1)
        await c.start(lambda _s: None)
        await eventually(lambda: c is not None and c.lock_tries >= 3)  # c keeps trying; the lock stays put
        assert other.leader and not c.leader
    finally:
        for s in (a, b, c):
            if s is not None:
                await s.stop()


async def test_replicas_re_read_only_nodes_changed_by_more_than_a_heartbeat(sql_store: SqlStore) -> None:
    store = sql_store
    await store.upsert_node(_node("beating", heard=NOW))
    await store.upsert_node(_node("quarantined", heard=NOW))
    await store.upsert_node(_node("new-model", heard=NOW))
    assert {n.id for n in await store.list_nodes()} == {"beating", "quarantined", "new-model"}
    since = time.time()
    assert await store.list_nodes(changed_since=since + 1) == []
    await store.record_heartbeats([("beating", NOW + 10, ""), ("new-model", NOW + 10, "llama")])
    await store.set_quarantine("quarantined", True, "lied")
    changed = {n.id: n for n in await store.list_nodes(changed_since=since)}
    assert set(changed) == {"quarantined", "new-model"}, "a plain heartbeat is not a change"
    assert changed["new-model"].loaded_model == "llama" and changed["quarantined"].quarantined
    beating = await store.get_node("beating")
    assert beating is not None and beating.last_heartbeat == NOW + 10, "the heartbeat itself was stored"
