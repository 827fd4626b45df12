"""What the coordinator holds in memory about live nodes and open assignments.

All of it is derived from the store (rebuilt at start) plus heartbeats, so a
restart loses nothing that matters: nodes get one lease of grace to reconnect.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from phage.domain import Node, NodeState, TaskSpec
from phage.scheduler import NodeView


@dataclass(slots=True)
class OpenAttempt:
    """An assignment a node holds."""

    id: str
    task_id: str
    node_id: str
    lease_expires_at: float
    kind: str = ""
    spec: TaskSpec = field(default_factory=TaskSpec)
    input_sha256: str = ""
    """What the node must attest it was given."""


@dataclass(slots=True)
class LiveNode:
    """A node's live view: its record, liveness, what it holds, what it must be told."""

    node: Node
    last_seen: float
    attempts: set[str] = field(default_factory=set)
    cancels: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: dict[str, Any] = field(default_factory=dict)
    dirty: bool = False
    """Heartbeat not yet flushed to the store."""
    here: bool = True
    """The node talks to this replica. With several coordinators on one database a replica also
    knows the nodes connected to the others (from the store), and judges only its own."""

    @property
    def free_slots(self) -> int:
        """How many more assignments the node may hold."""
        return max(0, self.node.max_concurrency - len(self.attempts))

    @property
    def online(self) -> bool:
        """True while the node is counted alive."""
        return self.node.state is NodeState.ONLINE

    @property
    def accepts_work(self) -> bool:
        """True when the node may be handed new work at all."""
        node = self.node
        return node.state is NodeState.ONLINE and not node.draining and not node.quarantined

    def models(self) -> list[str]:
        """Models the node serves now: what its engine reports (at least the loaded one)."""
        models = self.metrics.get("models") or self.node.hardware.get("models") or []
        if self.node.loaded_model and self.node.loaded_model not in models:
            return [self.node.loaded_model, *models]
        return list(models)

    @property
    def gpus(self) -> list[dict[str, Any]]:
        """The node's GPUs with their latest figures (from its heartbeat, else its registration)."""
        return list(self.metrics.get("gpus") or self.node.hardware.get("gpus", []))

    def vram_bytes(self) -> tuple[int, int]:
        """(total, used) GPU memory over all its GPUs."""
        gpus = self.gpus
        return (
            sum(int(g.get("vram_total_bytes", 0)) for g in gpus),
            sum(int(g.get("vram_used_bytes", 0)) for g in gpus),
        )

    def view(self, slots: int = 1) -> NodeView:
        """What the scheduler needs to know of this node to match tasks against it."""
        return NodeView(self.node.id, slots, frozenset(self.node.sandboxes), frozenset(self.models()))


class LivePool:
    """Live nodes and open attempts."""

    def __init__(self) -> None:
        self.nodes: dict[str, LiveNode] = {}
        self.attempts: dict[str, OpenAttempt] = {}
        self.waiting: set[str] = set()
        """Nodes with a FetchTask long-poll in progress."""

    def add_attempt(self, attempt: OpenAttempt) -> None:
        """Track a new assignment."""
        self.attempts[attempt.id] = attempt
        live = self.nodes.get(attempt.node_id)
        if live is not None:
            live.attempts.add(attempt.id)

    def drop_attempt(self, attempt_id: str) -> OpenAttempt | None:
        """Stop tracking an assignment (finished, lost, cancelled)."""
        att = self.attempts.pop(attempt_id, None)
        if att is not None:
            live = self.nodes.get(att.node_id)
            if live is not None:
                live.attempts.discard(attempt_id)
                live.wake.set()  # a slot opened up
        return att

    def online_nodes(self) -> list[LiveNode]:
        """Nodes currently alive."""
        return [n for n in self.nodes.values() if n.online]
