"""Liveness: a node that stops sending heartbeats is declared dead, and lapsed leases are lost.

The deadline is one lease (``missed_heartbeats`` heartbeat intervals): a node's work goes
elsewhere once the node has certainly missed that many heartbeats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from phage.coordinator.chat import ChatRouter
from phage.coordinator.feed import EventBus
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.pool import LiveNode, LivePool
from phage.domain import NodeState
from phage.store import SqlStore

log = logging.getLogger("phage.coordinator")


class Liveness:
    """Declare silent nodes dead and requeue work whose lease lapsed."""

    def __init__(
        self,
        store: SqlStore,
        pool: LivePool,
        bus: EventBus,
        ledger: TaskLedger,
        chat: ChatRouter,
        *,
        lease_s: float,
        missed_heartbeats: int,
        clock: Callable[[], float],
        replicated: bool = False,
    ) -> None:
        self.store, self.pool, self.bus, self.ledger, self.chat = store, pool, bus, ledger, chat
        self.lease_s = lease_s
        self.missed_heartbeats = missed_heartbeats
        self.clock = clock
        self.replicated = replicated
        """Several replicas on one database: judge only the nodes talking to this one; a node silent
        here but heard by another replica (its heartbeat in the store is newer) has moved, not died."""

    async def check(self) -> None:
        """One pass: dead nodes lose their work and their chats; lapsed leases are lost."""
        now = self.clock()
        for live in list(self.pool.nodes.values()):
            if live.online and live.here and now - live.last_seen > self.lease_s:
                if self.replicated and await self._moved(live):
                    continue
                live.node.state = NodeState.DEAD
                await self.store.set_node_state(live.node.id, NodeState.DEAD)
                self.bus.node(live.node.id, NodeState.DEAD.value, name=live.node.name)
                log.warning("node %s missed %d heartbeats: dead", live.node.name, self.missed_heartbeats)
                await self.ledger.lose(
                    list(live.attempts), f"node {live.node.name} stopped sending heartbeats"
                )
                self.chat.node_lost(live.node.id, "stopped sending heartbeats")
        expired = [
            a.id
            for a in self.pool.attempts.values()
            if a.lease_expires_at < now and ((n := self.pool.nodes.get(a.node_id)) is None or n.here)
        ]
        if expired:
            await self.ledger.lose(expired, "assignment lease expired")

    async def _moved(self, live: LiveNode) -> bool:
        """True (and the node handed over) when another replica has heard from it since we did."""
        row = await self.store.get_node(live.node.id)
        if row is None or row.last_heartbeat <= live.last_seen:
            return False
        log.info("node %s now talks to another replica", live.node.name)
        live.here = False
        live.node, live.last_seen = row, row.last_heartbeat
        for aid in list(live.attempts):
            self.pool.drop_attempt(aid)
        return True
