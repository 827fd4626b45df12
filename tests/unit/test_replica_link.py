"""Two replicas' ReplicaLinks on one real PostgreSQL database: events, queued work and key changes cross."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from phage.coordinator import replicas
from phage.coordinator.feed import EventBus
from phage.coordinator.keys import ApiKeys, hash_secret
from phage.coordinator.replicas import RELAY_PERIOD_S, ReplicaLink
from phage.domain import Node, NodeState, Task, TaskKind, TaskSpec, TaskState
from phage.scheduler import ReadyQueue
from phage.store import QueuedTask, SqlStore
from phage.store.signals import PostgresSignals
from phage.store.sql_replicas import Sweep
from phage.testing import eventually
from phage.testing_postgres import PostgresServer
from tests.conftest import selected_backends


@dataclass
class Replica:
    """What one coordinator replica holds that the link keeps in step."""

    store: SqlStore
    bus: EventBus = field(default_factory=EventBus)
    queue: ReadyQueue = field(default_factory=ReadyQueue)
    woken: list[str] = field(default_factory=list)
    rows: list[list[Node]] = field(default_factory=list)
    beats: list[tuple[str, float]] = field(default_factory=list)
    keys: ApiKeys | None = None
    link: ReplicaLink | None = None

    async def start(self, url: str) -> Replica:
        signals = PostgresSignals(url, retry_s=0.1)
        self.keys = ApiKeys(self.store, signals)

        async def nodes_changed(rows: list[Node]) -> None:
            self.rows.append(rows)

        async def swept(_sweep: Sweep) -> None:
            pass

        def wake(tasks: list[QueuedTask]) -> None:
            self.woken += [t.id for t in tasks]

        self.link = ReplicaLink(
            signals=signals,
            store=self.store,
            queue=self.queue,
            bus=self.bus,
            keys=self.keys,
            wake=wake,
            nodes_changed=nodes_changed,
            heard=self.beats.extend,
            mirrors=lambda: True,
            swept=swept,
            local_nodes=list,
            lease_s=30.0,
            clock=time.time,
            replicated=True,
        )
        await self.link.start()
        return self


@pytest.fixture
async def pair(postgres_server: PostgresServer) -> AsyncIterator[tuple[Replica, Replica]]:
    if "postgresql" not in selected_backends():
        pytest.skip("PHAGE_TEST_DB leaves PostgreSQL out")
    url = postgres_server.create_database()
    stores = [SqlStore(url), SqlStore(url)]
    for s in stores:
        await s.open()
    a, b = await Replica(stores[0]).start(url), await Replica(stores[1]).start(url)
    try:
        yield a, b
    finally:
        for r in (a, b):
            assert r.link is not None
            await r.link.stop()
            await r.store.close()


async def test_events_queued_work_and_key_changes_reach_the_other_replica(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    seen: list[dict[str, object]] = []
    async with b.bus.subscribe() as sub:

        async def drain() -> None:
            while True:
                seen.append(await sub.next())

        reader = asyncio.create_task(drain())
        try:
            # several bursts, each flushed in its own relay batch
            for burst in range(3):
                for i in range(200):
                    a.bus.task(f"t-{burst}-{i}", "running", node="n" * 44)
                await asyncio.sleep(RELAY_PERIOD_S * 3)
            await eventually(lambda: len(seen) == 600)
            assert [e["id"] for e in seen] == [f"t-{b_}-{i}" for b_ in range(3) for i in range(200)]

            # a task queued through a: its "queued" event makes b load it from the store and offer it
            task = Task(
                id="t-new",
                kind=TaskKind.NOOP,
                state=TaskState.QUEUED,
                spec=TaskSpec(),
                created_at=1.0,
                updated_at=1.0,
            )
            await a.store.add_tasks([task])
            a.bus.task(task.id, TaskState.QUEUED.value, kind="noop")
            await eventually(lambda: "t-new" in b.queue)
            assert b.woken == ["t-new"]
        finally:
            reader.cancel()

    assert a.keys is not None and b.keys is not None
    key_id, secret = await a.keys.create("temp", "user", 1.0)
    await b.keys.authenticate(f"Bearer {secret}")  # cached on b now
    assert hash_secret(secret) in b.keys._cache
    await a.keys.revoke(key_id)
    await eventually(lambda: hash_secret(secret) not in b.keys._cache, within=1.0)


async def test_node_rows_follow_changes_and_heartbeats_without_whole_re_reads(
    pair: tuple[Replica, Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicas, "CHANGE_OVERLAP_S", 0.3)
    monkeypatch.setattr(replicas, "BEATS_REFRESH_S", 0.5)
    a, b = pair

    def reread(node_id: str, quarantined: bool = False) -> bool:
        return any(n.id == node_id and n.quarantined == quarantined for rows in b.rows for n in rows)

    node = Node(id="n1", name="n1", state=NodeState.ONLINE, registered_at=1.0, last_heartbeat=1.0)
    await a.store.upsert_node(node)
    await eventually(lambda: reread("n1"), within=3.0)
    await asyncio.sleep(replicas.REFRESH_PERIOD_S + 0.5)  # past the overlap of the changed-rows reads
    b.rows.clear()
    await a.store.record_heartbeats([("n1", 5_000.0, "")])
    await eventually(lambda: ("n1", 5_000.0) in b.beats, within=3.0)
    await asyncio.sleep(replicas.REFRESH_PERIOD_S)
    assert b.rows and not reread("n1"), "a heartbeat alone does not make a replica re-read the row"
    await a.store.set_quarantine("n1", True, "lied")
    await eventually(lambda: reread("n1", quarantined=True), within=3.0)
