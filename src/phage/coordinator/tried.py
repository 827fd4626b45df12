"""Which nodes already held an attempt of a task, so further copies go to other nodes.

Best-of-N generate tasks and quorum jobs need independent answers: a second copy on the node
that produced the first proves nothing. Rebuilt from the store at start.
"""

from __future__ import annotations

from collections.abc import Mapping


class TriedNodes:
    """Task id -> the nodes that held (or voted on) one of its attempts."""

    def __init__(self) -> None:
        self._by_task: dict[str, set[str]] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_task

    def get(self, task_id: str) -> set[str] | None:
        """The nodes that tried this task, or None when none is remembered."""
        return self._by_task.get(task_id)

    def add(self, task_id: str, node_id: str) -> None:
        """Remember that ``node_id`` held an attempt of ``task_id``."""
        self._by_task.setdefault(task_id, set()).add(node_id)

    def update(self, known: Mapping[str, set[str]]) -> None:
        """Merge what the store remembers (at start)."""
        for task_id, nodes in known.items():
            self._by_task.setdefault(task_id, set()).update(nodes)

    def forget(self, task_id: str) -> None:
        """The task settled or was cancelled: nothing more to place."""
        self._by_task.pop(task_id, None)
