"""Dispatch: the long-poll fetch, claiming queued tasks for a node, and their start.

A node asks for work (``FetchTask``); the ready queue picks tasks it may run, the store claims
them in one transaction, and each claim becomes an assignment with its input hash (what the node
must attest it was given) and, when small, its workspace inline. With nothing to hand out, the
call waits until the ledger wakes the node for new work, or its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from functools import lru_cache

from phage.coordinator.admission import Admission
from phage.coordinator.feed import EventBus
from phage.coordinator.nodes import NodeRegistry
from phage.coordinator.pool import LiveNode, LivePool, OpenAttempt
from phage.coordinator.replication import Replication
from phage.coordinator.tried import TriedNodes
from phage.domain import Assignment, Attempt, Dispatch, TaskKind, TaskSpec, TaskState
from phage.pki.attestation import input_hash
from phage.scheduler import NodeView, ReadyQueue, eligible
from phage.store import QueuedTask, SqlStore
from phage.store.blobs import BlobStore


def task_input_sha256(task_id: str, kind: str, spec: TaskSpec) -> str:
    """What a node must attest it was given for this task."""
    return input_hash(
        task_id=task_id,
        kind=kind,
        manifest=spec.manifest.to_dict() if spec.manifest is not None else None,
        generate=spec.generate.to_dict() if spec.generate is not None else None,
        workspace_sha256=spec.workspace,
        isolation=spec.isolation,
    )


def open_attempt(
    att: Attempt, kind: str, spec: TaskSpec, lease: float, input_sha256: str | None = None
) -> OpenAttempt:
    """The live pool's record of an assignment a node holds."""
    if input_sha256 is None:
        input_sha256 = task_input_sha256(att.task_id, kind, spec)
    return OpenAttempt(att.id, att.task_id, att.node_id, lease, kind, spec, input_sha256)


class Dispatcher:
    """Hands queued work to the nodes that ask for it."""

    def __init__(
        self,
        store: SqlStore,
        queue: ReadyQueue,
        pool: LivePool,
        blobs: BlobStore,
        bus: EventBus,
        nodes: NodeRegistry,
        replication: Replication,
        tried: TriedNodes,
        *,
        lease_s: float,
        inline_workspace_bytes: int,
        fetch_wait_ms_max: int,
        clock: Callable[[], float],
    ) -> None:
        self.store, self.queue, self.pool, self.bus = store, queue, pool, bus
        self.nodes, self.replication, self.tried = nodes, replication, tried
        self.lease_s = lease_s
        self.inline_workspace_bytes = inline_workspace_bytes
        self.fetch_wait_ms_max = fetch_wait_ms_max
        self.clock = clock
        self._read_small_blob = lru_cache(maxsize=256)(blobs.read)

    async def adopt(self, live: LiveNode) -> None:
        """A node moved here from another replica: take over the assignments it holds, from the store."""
        lease = self.clock() + self.lease_s
        for att, task in await self.store.open_attempts_of(live.node.id):
            if att.id not in self.pool.attempts:
                self.pool.add_attempt(open_attempt(att, task.kind.value, task.spec, lease))

    async def fetch(self, live: LiveNode, max_tasks: int, wait_ms: int) -> tuple[list[Dispatch], list[str]]:
        """Long-poll: assignments for this node, or cancellations, or nothing at the deadline."""
        await self.nodes.seen(live)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_ms, self.fetch_wait_ms_max) / 1000
        node_id = live.node.id
        while True:
            live.wake.clear()
            if live.cancels:
                cancels, live.cancels = live.cancels, []
                return [], cancels
            # The node counts its own free slots; results it is still reporting hold no slot there,
            # so allow that much pipelining, bounded at twice its concurrency.
            limit = Admission.dispatch_limit(live, max_tasks)
            if limit > 0 and len(self.queue) and live.online and not live.node.quarantined:
                view = live.view(limit)
                picked = self.queue.take(view, limit, allow=functools.partial(self._distinct_ok, view=view))
                if picked:
                    dispatches = await asyncio.shield(self._claim(live, picked))
                    if dispatches:
                        return dispatches, []
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return [], []
            self.pool.waiting.add(node_id)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(live.wake.wait(), remaining)
            finally:
                self.pool.waiting.discard(node_id)

    def _distinct_ok(self, task: QueuedTask, view: NodeView) -> bool:
        """Best-of-N: one attempt per node, unless the task allows repeats and no other node can."""
        tried = self.tried.get(task.id)
        if not tried or view.id not in tried:
            return True
        gen = task.spec.generate
        if gen is None or gen.distinct == "wait":
            return False
        return not any(
            live.node.id not in tried and not live.node.quarantined and eligible(task, live.view())
            for live in self.pool.online_nodes()
        )

    async def _claim(self, live: LiveNode, picked: list[QueuedTask]) -> list[Dispatch]:
        now = self.clock()
        by_id = {t.id: t for t in picked}
        try:
            claimed = await self.store.claim_replicas(live.node.id, list(by_id), now, self.lease_s)
        except Exception:
            self.queue.extend(picked)  # still queued in the store: keep them offerable
            raise
        out: list[Dispatch] = []
        for att, more in claimed:
            task = by_id[att.task_id]
            if more:
                self.queue.push(task)  # best-of-N: further attempts still wanted
            if task.spec.best_of > 1 or self.replication.needs_distinct(task):
                self.tried.add(task.id, live.node.id)
            dispatch = self._dispatch(att, task)
            self.pool.add_attempt(
                open_attempt(att, task.kind, task.spec, att.lease_expires_at, dispatch.input_sha256)
            )
            out.append(dispatch)
            self.bus.task(att.task_id, TaskState.DISPATCHED.value, node=live.node.id, attempt=att.id)
        return out

    def _dispatch(self, att: Attempt, task: QueuedTask) -> Dispatch:
        digest, size = task.spec.workspace, task.spec.workspace_size
        inline = None
        if digest and size <= self.inline_workspace_bytes:
            inline = self._read_small_blob(digest)
        assignment = Assignment(att.id, att.task_id, TaskKind(task.kind), task.spec, att.lease_expires_at)
        return Dispatch(
            assignment, inline, digest, size, task_input_sha256(att.task_id, task.kind, task.spec)
        )

    async def start_tasks(self, live: LiveNode, attempt_ids: Sequence[str]) -> list[str]:
        """The node began these; returns any it should not run."""
        await self.nodes.seen(live)
        mine = [a for a in attempt_ids if (att := self.pool.attempts.get(a)) and att.node_id == live.node.id]
        not_wanted = await self.store.mark_running(live.node.id, mine, self.clock())
        lease = self.clock() + self.lease_s
        for aid in mine:
            if aid not in not_wanted:
                self.pool.attempts[aid].lease_expires_at = lease
                self.bus.task(self.pool.attempts[aid].task_id, TaskState.RUNNING.value, node=live.node.id)
        return [a for a in attempt_ids if a not in mine] + not_wanted

    def holds_workspace(self, live: LiveNode, digest: str) -> bool:
        """May this node download this blob? Only the workspace of a task it holds now."""
        for aid in list(live.attempts):
            att = self.pool.attempts.get(aid)
            if att is not None and att.spec.workspace == digest:
                return True
        return False
