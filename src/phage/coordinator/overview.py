"""The pool at a glance: what ``/api/status`` shows (nodes, slots, GPU memory, queue, tasks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phage import __version__
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.pool import LivePool
from phage.domain import NodeState
from phage.scheduler import ReadyQueue


class PoolOverview:
    """Summaries read from the live pool, the ready queue and the store's task counts."""

    def __init__(
        self, ledger: TaskLedger, pool: LivePool, queue: ReadyQueue, clock: Callable[[], float]
    ) -> None:
        self.ledger, self.pool, self.queue, self.clock = ledger, pool, queue, clock
        self.started_at = 0.0
        """When the coordinator finished starting (for its uptime)."""

    async def health(self) -> dict[str, Any]:
        """Liveness: the coordinator is up and its store answers."""
        counts = await self.ledger.counts()
        return {"ok": True, "version": __version__, "queued": counts.get("queued", 0)}

    async def status(self) -> dict[str, Any]:
        """Pool summary: nodes, slots, VRAM, queue, tasks by state."""
        counts = await self.ledger.counts()
        online = self.pool.online_nodes()
        vram = [n.vram_bytes() for n in online]
        return {
            "version": __version__,
            "uptime_s": round(self.clock() - self.started_at, 1),
            "nodes": {
                "total": len(self.pool.nodes),
                "online": len(online),
                "dead": sum(1 for n in self.pool.nodes.values() if n.node.state is NodeState.DEAD),
            },
            "slots": {
                "total": sum(n.node.max_concurrency for n in online),
                "busy": sum(len(n.attempts) for n in online),
            },
            "vram": {
                "total_bytes": sum(total for total, _ in vram),
                "used_bytes": sum(used for _, used in vram),
            },
            "queue": {"depth": len(self.queue), "by_kind": self.queue.depth_by_kind()},
            "tasks": counts,
        }
