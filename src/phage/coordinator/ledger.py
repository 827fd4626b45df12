"""The task ledger: the moves every use case shares on queued and open work.

Putting work on the ready queue (and waking nodes that can take it), cancelling it,
losing the attempts of a node that died or was shut out, and offering again what the
store says wants another attempt. Each move writes the store first, then mirrors it in
memory (queue, live pool) and publishes it on the feed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from phage.coordinator.counters import Counters
from phage.coordinator.feed import EventBus
from phage.coordinator.pool import LivePool
from phage.coordinator.tried import TriedNodes
from phage.domain import Attempt, Task, TaskState
from phage.errors import NotFound
from phage.scheduler import ReadyQueue, eligible
from phage.store import LostOutcome, PageCursor, QueuedTask, SqlStore

log = logging.getLogger("phage.coordinator")

WAKE_SAMPLE = 64
"""Tasks of one batch checked for eligibility per waiting node: eligibility rarely differs inside a batch."""


def queued(task: Task) -> QueuedTask:
    """A stored task as the ready queue holds it."""
    return QueuedTask(task.id, task.kind.value, task.priority, task.created_at, task.spec)


class TaskLedger:
    """Queue, cancel, lose and requeue tasks: store first, then memory, then the feed."""

    def __init__(
        self,
        store: SqlStore,
        queue: ReadyQueue,
        pool: LivePool,
        bus: EventBus,
        counters: Counters,
        tried: TriedNodes,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.queue = queue
        self.pool = pool
        self.bus = bus
        self.counters = counters
        self.tried = tried
        self.clock = clock
        self.on_queued: Callable[[], None] | None = None
        """Called whenever tasks are queued: wakes the coordinator's own worker (sharded generate tasks)."""

    async def add(self, tasks: list[Task]) -> None:
        """Store new tasks (all or none), queue them and wake nodes that can take them."""
        await self.store.add_tasks(tasks)
        items = [queued(t) for t in tasks]
        for task, item in zip(tasks, items, strict=True):
            self.queue.push(item)
            self.bus.task(task.id, TaskState.QUEUED.value, kind=task.kind.value, owner=task.owner)
        self.counters.submitted += len(tasks)
        self.wake_for(items)

    async def get(self, task_id: str) -> tuple[Task, list[Attempt]]:
        """A task and all its attempts."""
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}", field="id")
        return task, await self.store.attempts_for(task_id)

    async def find(
        self,
        *,
        state: TaskState | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        before: float | None = None,
        after: PageCursor | None = None,
    ) -> list[Task]:
        """Tasks, newest first (``owner``: only that key's); ``after`` continues a page."""
        return await self.store.list_tasks(
            state=state, kind=kind, owner=owner, limit=limit, before=before, after=after
        )

    async def owner_of(self, task_id: str) -> str | None:
        """The key that submitted a task, or None when there is no such task."""
        task = await self.store.get_task(task_id)
        return task.owner if task is not None else None

    async def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        return await self.store.count_tasks()

    def wake_for(self, tasks: list[QueuedTask]) -> None:
        """Wake long-polling nodes that can take these tasks: enough for all of them, and no more.

        Waking only eligible nodes matters once nodes differ (models, sandboxes): a node
        woken for work it cannot take would leave that work waiting for the next poll.
        """
        wanted = len(tasks)
        if not wanted:
            return
        if self.on_queued is not None:
            self.on_queued()
        sample = tasks[:WAKE_SAMPLE]
        for node_id in list(self.pool.waiting):
            live = self.pool.nodes.get(node_id)
            if live is None or not live.accepts_work:
                continue
            view = live.view()
            if any(eligible(t, view) for t in sample):
                live.wake.set()
                wanted -= live.free_slots
                if wanted <= 0:
                    return

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task, telling any node running it to stop."""
        task, stopped = await self.store.cancel_task(task_id, self.clock())
        self.queue.discard(task_id)
        self.tried.forget(task_id)
        for att in stopped:
            self.pool.drop_attempt(att.id)
            live = self.pool.nodes.get(att.node_id)
            if live is not None:
                live.cancels.append(att.id)
                live.wake.set()
        self.bus.task(task_id, task.state.value)
        return task

    async def lose(self, attempt_ids: Sequence[str], reason: str) -> None:
        """Attempts that will not report (node dead, lease lapsed, node shut out): fail and maybe requeue."""
        if not attempt_ids:
            return
        outcomes = await self.store.fail_lost(list(attempt_ids), reason, self.clock())
        for aid in attempt_ids:
            self.pool.drop_attempt(aid)
        await self.lost(outcomes, reason)

    async def lost(self, outcomes: Sequence[LostOutcome], reason: str) -> None:
        """Attempts the store already recorded as lost (here, or by the leader's sweep): forget, requeue."""
        for out in outcomes:
            self.pool.drop_attempt(out.attempt_id)
            self.bus.task(out.task_id, out.task_state.value, reason=reason, attempt=out.attempt_id)
        await self.requeue([out.task_id for out in outcomes if out.requeued])

    async def requeue(self, task_ids: Sequence[str]) -> None:
        """Offer tasks again that the store says want another attempt."""
        if not task_ids:
            return
        pushed = []
        for task_id in task_ids:
            task = await self.store.get_task(task_id)
            if task is not None and not task.state.terminal:
                item = queued(task)
                self.queue.push(item)
                pushed.append(item)
        self.counters.requeued += len(pushed)
        self.wake_for(pushed)
