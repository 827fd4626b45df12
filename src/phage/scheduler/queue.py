"""The in-memory index of queued tasks: a cache of the store, rebuilt at start.

The store is the truth (a claim is a compare-and-set there); this index only
lets FetchTask find candidates in O(log n) instead of querying per poll.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable

from phage.domain.models import QueuedTask
from phage.scheduler.policy import NodeView, eligible, order_key

MAX_SKIP = 1000  # bound the scan past ineligible work per fetch


class ReadyQueue:
    """Queued tasks in placement order."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, float, str], QueuedTask]] = []
        self._live: dict[str, QueuedTask] = {}
        self._models: Counter[str] = Counter()
        """Queued generate tasks per model, kept as tasks come and go (placement asks every heartbeat)."""

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def push(self, task: QueuedTask) -> None:
        """Add (or re-add) a queued task."""
        old = self._live.get(task.id)
        if old is not None:
            self._count(old, -1)
        self._live[task.id] = task
        self._count(task, 1)
        heapq.heappush(self._heap, (order_key(task), task))

    def extend(self, tasks: Iterable[QueuedTask]) -> None:
        """Add many."""
        for task in tasks:
            self.push(task)

    def discard(self, task_id: str) -> None:
        """Forget a task (cancelled, claimed elsewhere); lazily dropped from the heap."""
        task = self._live.pop(task_id, None)
        if task is not None:
            self._count(task, -1)

    def take(
        self, node: NodeView, limit: int, allow: Callable[[QueuedTask], bool] | None = None
    ) -> list[QueuedTask]:
        """Remove and return up to ``limit`` tasks this node may run, best first."""
        picked: list[QueuedTask] = []
        skipped: list[tuple[tuple[int, float, str], QueuedTask]] = []
        while self._heap and len(picked) < limit and len(skipped) < MAX_SKIP:
            key, task = heapq.heappop(self._heap)
            if self._live.get(task.id) is not task:
                continue  # stale entry
            if eligible(task, node) and (allow is None or allow(task)):
                del self._live[task.id]
                self._count(task, -1)
                picked.append(task)
            else:
                skipped.append((key, task))
        for item in skipped:
            heapq.heappush(self._heap, item)
        return picked

    def tasks(self) -> list[QueuedTask]:
        """Every task now in the queue."""
        return list(self._live.values())

    def _count(self, task: QueuedTask, delta: int) -> None:
        if task.kind == "generate":
            model = task.spec.model
            if model is not None:
                self._models[model] += delta
                if self._models[model] <= 0:
                    del self._models[model]

    def depth_by_model(self) -> dict[str, int]:
        """Queued generate tasks per model."""
        return dict(self._models)

    def depth_by_kind(self) -> dict[str, int]:
        """Queued tasks per kind."""
        out: dict[str, int] = {}
        for task in self._live.values():
            out[task.kind] = out.get(task.kind, 0) + 1
        return out
