"""The placement rules, kept free of I/O so they are testable in isolation.

Today: a node takes work it may run (isolation it can provide), highest
priority first, then oldest, up to its free slots. Model/VRAM fit and trust
rules slot in as further clauses of :func:`eligible` and :func:`order_key`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phage.domain.models import QueuedTask


@dataclass(frozen=True, slots=True)
class NodeView:
    """What placement knows about the asking node."""

    id: str
    free_slots: int
    sandboxes: frozenset[str] = field(default_factory=frozenset)
    models: frozenset[str] = field(default_factory=frozenset)
    """Models the node's engine serves."""


def order_key(task: QueuedTask) -> tuple[int, float, str]:
    """Sort key: priority (high first), then age (old first), then id for determinism."""
    return (-task.priority, task.created_at, task.id)


def required_isolation(task: QueuedTask) -> str:
    """The sandbox backend a task insists on, or ``any``."""
    return task.spec.isolation or "any"


def eligible(task: QueuedTask, node: NodeView) -> bool:
    """May ``node`` run ``task``?"""
    need = required_isolation(task)
    if task.kind == "noop":
        return True
    if task.kind == "generate" and task.spec.model not in node.models:
        return False
    if need == "any":
        return bool(node.sandboxes)
    return need in node.sandboxes
