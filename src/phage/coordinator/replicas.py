"""Keeping one coordinator in step with the other replicas on its PostgreSQL database.

Every fact lives in the database; this service makes the in-memory caches of
each replica (ready queue, live node records, API key cache, feed) follow what
the *other* replicas do, fast through signals (``store/signals.py``) and surely
through a re-read on a timer:

- tasks queued or requeued anywhere are pushed into every replica's ready queue
  (their ``queued`` feed events say which; every few seconds, a full re-read). Two replicas
  offering the same task is harmless: the claim is compare-and-set in the database,
  and the replica that loses simply drops it.
- feed events are relayed, batched every 50 ms, so a subscriber on any replica
  sees every replica's events.
- API keys, quarantine, drain and admission changes take effect everywhere within
  a second: a key change signals at once (``ApiKeys``), a node change publishes a
  feed event that is relayed, and node rows and the key cache are re-read every
  second regardless.
- each node is judged by exactly one replica: the one it talks to (its in-memory
  liveness check), or, for a node talking to none, the leader (advisory lock),
  which sweeps the store for nodes silent on every replica and leases nobody
  renewed — what a killed replica leaves behind.

With SQLite there is one coordinator and nothing here runs: its in-memory liveness
check sees every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from phage.coordinator.feed import Event, EventBus
from phage.coordinator.keys import ApiKeys
from phage.domain import Node
from phage.errors import StoreUnavailable
from phage.scheduler import ReadyQueue
from phage.store import QueuedTask, SqlStore
from phage.store.signals import MAX_PAYLOAD, Signal, Signals
from phage.store.sql_replicas import Sweep

log = logging.getLogger("phage.coordinator.replicas")

RELAY_PERIOD_S = 0.05
REFRESH_PERIOD_S = 1.0
"""Changed node rows and the key cache are re-read this often: the bound on how stale a replica may be."""
FULL_REFRESH_S = 60.0
"""Every node row is re-read this often (anything a skewed clock hid from the changed-rows reads)."""
BEATS_REFRESH_S = 5.0
"""Every node's last heartbeat (two columns) is re-read this often: the ages of other replicas' nodes."""
CHANGE_OVERLAP_S = 5.0
"""Each changed-rows read looks this far back before the previous one began: clocks of replicas'
machines may differ by that much (rows carry the writer's wall clock) and writes commit late."""
QUEUE_RESYNC_S = 5.0


class ReplicaLink:
    """Follows the other replicas: queued work, feed events, node and key changes, the leader's sweep."""

    def __init__(
        self,
        *,
        signals: Signals,
        store: SqlStore,
        queue: ReadyQueue,
        bus: EventBus,
        keys: ApiKeys,
        wake: Callable[[list[QueuedTask]], None],
        nodes_changed: Callable[[list[Node]], Awaitable[None]],
        heard: Callable[[list[tuple[str, float]]], None],
        mirrors: Callable[[], bool],
        swept: Callable[[Sweep], Awaitable[None]],
        local_nodes: Callable[[], list[str]],
        lease_s: float,
        clock: Callable[[], float],
        replicated: bool,
    ) -> None:
        self.signals = signals
        self._store = store
        self._queue = queue
        self._bus = bus
        self._keys = keys
        self._wake = wake
        self._nodes_changed = nodes_changed
        self._heard = heard
        self._mirrors = mirrors
        """True while some node here talks to another replica (only their heartbeat ages need reading)."""
        self._swept = swept
        self._local_nodes = local_nodes
        """The nodes talking to this replica: its own liveness check judges them, the sweep does not."""
        self._lease_s = lease_s
        self._clock = clock
        self.replicated = replicated
        """True with several replicas possible (PostgreSQL): relay, listen and re-read."""
        self._outbox: list[Event] = []
        self._incoming: set[str] = set()
        self._arrived = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._slack = REFRESH_PERIOD_S + lease_s / 3
        """A heartbeat reaches the store up to a flush period after it arrives: the sweep allows for it."""
        self._sweep_from = 0.0
        self._full_at = self._beats_at = 0.0
        """Wall-clock time (``time.time()``) of the last full re-read of node rows."""
        self._changes_from = 0.0

    async def start(self) -> None:
        """Listen to the other replicas and start the background loops."""
        if not self.replicated:
            return
        # nodes get one lease (plus the flush delay) to reach some replica before anyone judges them
        self._sweep_from = self._clock() + self._lease_s + self._slack
        await self.signals.start(self._on_signal)
        self._bus.relay = self._hold
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("phage-leader-sweep", self._lead),
            ("phage-replica-relay", self._relay),
            ("phage-replica-queue", self._load_queued),
            ("phage-replica-refresh", self._refresh),
        ]
        self._tasks = [asyncio.create_task(self._forever(fn), name=name) for name, fn in loops]

    async def stop(self) -> None:
        """Stop the loops and leave the signal channel."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._bus.relay = None
        await self.signals.stop()

    @staticmethod
    async def _forever(step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except StoreUnavailable:
                await asyncio.sleep(REFRESH_PERIOD_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following even if one pass fails
                log.exception("replica loop step failed")
                await asyncio.sleep(REFRESH_PERIOD_S)

    # ---- hearing from them ---------------------------------------------------

    def _on_signal(self, signal: Signal) -> None:
        if signal.kind == "queued":
            self._incoming.update(str(i) for i in signal.data.get("ids", []))
            self._arrived.set()
        elif signal.kind == "events":
            for event in signal.data.get("events", []):
                if not isinstance(event, dict):
                    continue
                self._bus.deliver(event)
                # the events also say what this replica must pick up: work (re)queued elsewhere,
                # and node changes (quarantine, drain, approval, removal) made through another replica
                if event.get("type") == "task" and event.get("state") == "queued":
                    self._incoming.add(str(event.get("id")))
                    self._arrived.set()
                elif event.get("type") == "node":
                    self._refresh_now.set()
        elif signal.kind == "keys":
            self._keys.forget()
        elif signal.kind == "nodes":
            self._refresh_now.set()

    def _hold(self, event: Event) -> None:
        """A local event, to be relayed with the next batch."""
        self._outbox.append(event)

    async def _relay(self) -> None:
        await asyncio.sleep(RELAY_PERIOD_S)
        if not self._outbox:
            return
        events, self._outbox = self._outbox, []
        batch: list[dict[str, Any]] = []
        size = 0
        for event in events:
            cost = len(repr(event)) + 8
            if batch and size + cost > MAX_PAYLOAD:
                await self.signals.publish("events", events=batch)
                batch, size = [], 0
            batch.append(event)
            size += cost
        if batch:
            await self.signals.publish("events", events=batch)

    async def _load_queued(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), QUEUE_RESYNC_S)
        self._arrived.clear()
        if self._incoming:
            ids, self._incoming = list(self._incoming), set()
            found = await self._store.queued_by_ids(ids)
        else:  # the slow, sure path: whatever a lost signal left out
            found = [t for t in await self._store.queued_tasks() if t.id not in self._queue]
        fresh = [t for t in found if t.id not in self._queue]
        if fresh:
            self._queue.extend(fresh)
            self._wake(fresh)

    async def _refresh(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refresh_now.wait(), REFRESH_PERIOD_S)
        self._refresh_now.clear()
        self._keys.forget()
        began = time.time()
        if began - self._full_at >= FULL_REFRESH_S:
            rows = await self._store.list_nodes()
            self._full_at = began
        else:  # a heartbeat does not mark a row changed: at 10,000 nodes this reads a handful, not all
            rows = await self._store.list_nodes(changed_since=self._changes_from)
        self._changes_from = began - CHANGE_OVERLAP_S
        await self._nodes_changed(rows)
        if began - self._beats_at >= BEATS_REFRESH_S and self._mirrors():
            self._heard(await self._store.node_heartbeats())
            self._beats_at = began

    async def _lead(self) -> None:
        await asyncio.sleep(min(REFRESH_PERIOD_S, self._lease_s / 3))
        now = self._clock()
        if not self.signals.leader or now < self._sweep_from:
            return
        sweep = await self._store.sweep_stale(
            now,
            silent_since=now - self._lease_s - self._slack,
            lease_ended_by=now - self._slack,
            skip=self._local_nodes(),
        )
        if sweep.dead_nodes or sweep.lost:
            log.warning(
                "sweep: %d silent nodes dead, %d assignments lost", len(sweep.dead_nodes), len(sweep.lost)
            )
            await self._swept(sweep)
