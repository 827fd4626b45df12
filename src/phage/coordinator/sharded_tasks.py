"""Generate tasks for sharded models: the coordinator generates through a chain, then verifies.

A whole model's generate task goes to one node, which generates and runs the verifier in its
sandbox. No node holds a sharded model, so the coordinator does both halves itself, the way it
already does each half elsewhere:

- it **generates** through a chain of nodes exactly as for a chat (``sharded_chat.py``: routing,
  failover with replay, checked activations — every step of every hop when the task sets
  ``check_every_stage``);
- it **verifies** the candidate in its own sandbox (``verify.py``), the routine that re-runs
  untrusted nodes' claimed passes. Sending the candidate to some node's sandbox instead would add
  a round trip and a party to trust, and the coordinator would re-run an untrusted node's verdict
  anyway.

The runner is a worker on the same ready queue nodes take from (arq's pattern): it takes the
tasks whose model is a sharded model ready for inference, claims an attempt in the store under
its own data-plane node id, and records the result with the store's one ``finish_many`` — so
retries (``max_attempts``), best-of-N (the passing attempt with the fewest tokens), cancellation,
metering and the task views work as for every generate task. A coordinator that stops mid-run
leaves an open attempt whose lease lapses after a restart; the task is then queued again and
the runner takes it afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from phage.coordinator.counters import Counters
from phage.coordinator.feed import EventBus
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.sharded import ShardedModels
from phage.coordinator.sharded_chat import ShardedChat
from phage.coordinator.tried import TriedNodes
from phage.coordinator.verify import reverify
from phage.dataplane.generation import TextRequest
from phage.domain import Attempt, OutputFile, TaskResult, TaskState
from phage.domain.generate import GenerateSpec, extract_output
from phage.errors import PhageError
from phage.sandbox import Sandbox
from phage.scheduler import NodeView, ReadyQueue
from phage.store import QueuedTask, SqlStore
from phage.store.blobs import BlobStore

log = logging.getLogger("phage.sharded")

MAX_RUNNING = 4
"""Sharded generate attempts the coordinator drives at once (each holds a session on every hop)."""
ENGINE = "sharded"
"""What a sharded generation reports as its engine (the chain's nodes are in the usage log)."""

Charge = Callable[[str, GenerateSpec, str, TaskResult], Awaitable[None]]


class ShardedTasks:
    """Takes generate tasks for ready sharded models off the queue and runs them."""

    def __init__(
        self,
        *,
        driver_id: str,
        queue: ReadyQueue,
        store: SqlStore,
        blobs: BlobStore,
        ledger: TaskLedger,
        bus: EventBus,
        counters: Counters,
        tried: TriedNodes,
        sharded: ShardedModels,
        chat: ShardedChat,
        sandbox: Callable[[], Sandbox | None],
        scratch: Path,
        charge: Charge,
        lease_s: float,
        poll_s: float,
        max_output_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver_id = driver_id
        """The attempts' node id: the coordinator's own data-plane identity, the chain's caller."""
        self.queue, self.store, self.blobs, self.ledger = queue, store, blobs, ledger
        self.bus, self.counters, self.tried = bus, counters, tried
        self.sharded, self.chat = sharded, chat
        self.sandbox = sandbox
        self.scratch = scratch
        self.charge = charge
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_output_bytes = max_output_bytes
        self.clock = clock
        self.wake = asyncio.Event()
        """Set when tasks are queued; the loop also looks every ``poll_s`` (a model may turn ready)."""
        self.running: dict[str, asyncio.Task[None]] = {}

    # ---- taking work ------------------------------------------------------------

    def view(self) -> NodeView | None:
        """The runner as the queue sees a node: the ready sharded models it can serve, its free slots."""
        sandbox = self.sandbox()
        free = MAX_RUNNING - len(self.running)
        if sandbox is None or free <= 0:
            return None
        depth = self.queue.depth_by_model()
        ready = frozenset(
            m.name for m in self.sharded.models() if depth.get(m.name) and self.sharded.coverage(m.name).ready
        )
        if not ready:
            return None
        return NodeView(self.driver_id, free, frozenset({sandbox.name}), ready)

    async def run(self) -> None:
        """Take and start work until cancelled."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.poll_s)
                self.wake.clear()
                try:
                    await self.take()
                except Exception:
                    log.exception("taking sharded generate tasks failed")
        finally:
            for task in list(self.running.values()):
                task.cancel()

    async def take(self) -> int:
        """Claim what the queue has for ready sharded models and start each attempt; how many started."""
        view = self.view()
        if view is None:
            return 0
        picked = self.queue.take(view, view.free_slots)
        if not picked:
            return 0
        by_id = {t.id: t for t in picked}
        try:
            claimed = await self.store.claim_replicas(self.driver_id, list(by_id), self.clock(), self.lease_s)
        except Exception:
            self.queue.extend(picked)  # still queued in the store
            raise
        for att, more in claimed:
            task = by_id[att.task_id]
            if more:
                self.queue.push(task)  # best-of-N: further attempts, through chains routed afresh
            self.bus.task(att.task_id, TaskState.DISPATCHED.value, node=self.driver_id, attempt=att.id)
            job = asyncio.get_running_loop().create_task(self._attempt(att, task), name=f"phage-{att.id}")
            self.running[att.id] = job
            job.add_done_callback(functools.partial(self._done, att.id))
        return len(claimed)

    def _done(self, attempt_id: str, _job: asyncio.Task[None]) -> None:
        self.running.pop(attempt_id, None)
        self.wake.set()  # a slot is free

    # ---- one attempt ---------------------------------------------------------------

    async def _attempt(self, att: Attempt, queued: QueuedTask) -> None:
        gen = queued.spec.generate
        assert gen is not None  # the queue gave this runner generate tasks only
        await self.store.mark_running(self.driver_id, [att.id], self.clock())
        self.bus.task(att.task_id, TaskState.RUNNING.value, node=self.driver_id)
        renew = asyncio.get_running_loop().create_task(self._renew(att.id))
        try:
            result = await self._generate_and_verify(queued, gen)
        except Exception as exc:  # recorded as the attempt's error; the task is retried while it may be
            log.exception("sharded generate attempt %s failed", att.id)
            result = TaskResult(exit_code=-1, error=f"coordinator error: {exc!r}")
        finally:
            renew.cancel()
        await self._record(att, gen, result)

    async def _renew(self, attempt_id: str) -> None:
        """Keep the attempt's lease in the store while it runs (another replica's sweep reads it)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            with contextlib.suppress(PhageError):
                await self.store.record_heartbeats([], [(attempt_id, self.clock() + self.lease_s)])

    async def _generate_and_verify(self, queued: QueuedTask, gen: GenerateSpec) -> TaskResult:
        started = time.monotonic()
        task = await self.store.get_task(queued.id)
        owner = task.owner if task is not None else ""
        request = TextRequest(prompt=gen.prompt, max_tokens=gen.max_tokens, temperature=gen.temperature)
        try:
            done = await self.chat.complete(
                owner, gen.model, request, check_every_stage=gen.check_every_stage
            )
        except PhageError as exc:  # no chain (blocks lost meanwhile), or every failover spent
            return TaskResult(exit_code=-1, error=exc.message, engine=ENGINE, model=gen.model)
        text = extract_output(done.text, gen.extract)
        data = text.encode()
        base = TaskResult(
            exit_code=-1,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            engine=ENGINE,
            model=gen.model,
        )
        if len(data) > self.max_output_bytes:
            return replace(base, error=f"output is {len(data)} bytes; the limit is {self.max_output_bytes}")
        sandbox = self.sandbox()
        if sandbox is None:
            return replace(base, error="no sandbox works on this coordinator to run the verifier")
        digest = queued.spec.workspace
        workspace = await asyncio.to_thread(self.blobs.read, digest) if digest else None
        verdict = await reverify(sandbox, self.scratch, workspace, gen, text)
        output = await asyncio.to_thread(self.blobs.put, data)
        hops = ", ".join(n[:12] for n in done.chain)
        note = (
            f"[phage] generated through {len(done.chain)} hops ({hops}); "
            f"{done.checked} steps recomputed on other nodes\n"
        )
        return replace(
            base,
            exit_code=verdict.exit_code,
            outputs=[OutputFile(gen.output_path, output, len(data))],
            stdout_tail=verdict.log_tail,
            stderr_tail=note,
            wall_time_s=time.monotonic() - started,
            passed=verdict.passed,
            output_text=text,
            sandbox=sandbox.name,
        )

    async def _record(self, att: Attempt, gen: GenerateSpec, result: TaskResult) -> None:
        """Settle the attempt as the result pipeline settles a node's: store, charge, feed, requeue."""
        (outcome,) = await self.store.finish_many(self.driver_id, [(att.id, result)], self.clock())
        if isinstance(outcome, PhageError) or outcome.duplicate:
            return  # cancelled or lost meanwhile: nothing more to do
        task = await self.store.get_task(att.task_id)
        if task is not None:
            await self.charge(task.owner, gen, self.driver_id, result)
        state = outcome.task_state
        if state is None:
            return
        if state is TaskState.VERIFIED:
            self.counters.verified += 1
        elif state is TaskState.FAILED:
            self.counters.failed += 1
        if state.terminal:
            self.tried.forget(att.task_id)
        self.bus.task(att.task_id, state.value, node=self.driver_id, exit_code=result.exit_code)
        if outcome.requeued:
            await self.ledger.requeue([att.task_id])
