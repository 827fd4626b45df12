"""Training jobs of composable networks: placement of VNodes, the activation relay, checkpoints, checks.

The coordinator never touches a tensor here: it places each VNode on a node that
subscribed to training orders, relays activation frames from producers to
consumers (opaque bytes), records progress and checkpoints, and sends a sample of
an untrusted node's steps to another node to be recomputed. Placement is one
reconcile loop, so first placement, relocation after a node is lost, rollback of
a caught node's VNodes and recovery after a coordinator restart are the same move:
a VNode with no live host gets one, resuming from its last checkpoint it can trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from phage.coordinator.training_checks import (
    HOLDOUT_ROWS,
    KEPT_PASSES,
    HoldoutJob,
    HoldoutQueue,
    HoldoutVerdict,
    Passes,
    PendingCheck,
    evidence,
    judge,
    reason,
)
from phage.coordinator.training_relay import Frame, Inbox
from phage.coordinator.training_routes import CheckpointBatches, replay_from, routes
from phage.coordinator.training_types import CheckOrder, DropOrder, HostFacts, HostOrder, Order, Report
from phage.domain.ids import new_id
from phage.domain.networks import (
    NetworkRecord,
    NetworkState,
    TrainingConfig,
    VNodeState,
    thin_history,
)
from phage.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unavailable
from phage.scheduler.vnodes import Host, Unhosted, place
from phage.store.blobs import BlobStore
from phage.store.sql_training import TrainingRecords
from phage.training.spec import INPUT, NetworkSpec, parse_spec

log = logging.getLogger("phage.training")

RECONCILE_S = 0.2


@dataclass(slots=True)
class _Live:
    """A running network in memory."""

    record: NetworkRecord
    net: NetworkSpec
    states: dict[str, VNodeState]
    ended: set[str] = field(default_factory=set)
    """Producers that sent their last frame."""
    inboxes: dict[str, Inbox] = field(default_factory=dict)
    """Frames waiting for each VNode that has producers."""
    lost_since: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    frames: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Per VNode: frames passed on node to node, through the relay, in memory (as last reported)."""
    passes: dict[tuple[str, str], Passes] = field(default_factory=dict)
    """Checks passed so far by each (VNode, checkpoint) of an untrusted host not yet validated."""
    references: dict[str, str] = field(default_factory=dict)
    """Per VNode, the checkpoint its next held-out check compares with ("": initial weights);
    absent: its validated checkpoint."""
    rebase: set[str] = field(default_factory=set)
    """VNodes whose upstream was rolled back: their next checkpoint becomes the reference, unjudged."""
    rollbacks: int = 0


class TrainingService:
    """Places VNodes, relays activations, keeps checkpoints and checks untrusted steps."""

    def __init__(
        self,
        *,
        store: TrainingRecords,
        blobs: BlobStore,
        facts: Callable[[str], HostFacts | None],
        quarantine: Callable[[str, str], Awaitable[None]],
        lost_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.facts = facts
        self.quarantine = quarantine
        self.lost_after_s = lost_after_s
        self.clock = clock
        self.live: dict[str, _Live] = {}
        self.subscribers: dict[str, asyncio.Queue[Order]] = {}
        self.addresses: dict[str, str] = {}
        """Where each subscribed node's data plane listens for frames ("": it does not)."""
        self.checks: dict[str, PendingCheck] = {}
        self.caught: list[dict[str, Any]] = []
        """Evidence of every node caught, newest last (also in the quarantine reason)."""
        self.holdout = HoldoutQueue()
        self._task: asyncio.Task[None] | None = None
        self._holdout_task: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.batches = CheckpointBatches(blobs)

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Load running networks (their VNodes get hosts again as nodes subscribe)."""
        for rec in await self.store.list_networks(NetworkState.RUNNING, limit=10_000):
            states = {v.vnode_id: v for v in await self.store.vnode_states(rec.id)}
            live = _Live(rec, parse_spec(rec.spec), states)
            now = self.clock()
            for vid, v in list(states.items()):
                if v.node_id and not v.done:
                    # Frames in flight died with the old coordinator, and its hosts' workers may or
                    # may not have outlived it: every VNode restarts from its checkpoint under a new
                    # generation, so producers replay what their consumers' checkpoints lack.
                    v = replace(v, generation=v.generation + 1)
                    states[vid] = v
                    await self.store.save_vnode(v)
                    live.lost_since[v.vnode_id] = now  # hosts get one grace period to resubscribe
                if v.done:
                    live.ended.add(v.vnode_id)
            self.live[rec.id] = live
        self._task = asyncio.create_task(self._reconcile_loop(), name="phage-training")
        self._holdout_task = asyncio.create_task(self._holdout_loop(), name="phage-training-holdout")

    async def stop(self) -> None:
        """Stop placing and judging."""
        for task in (self._task, self._holdout_task, self._warming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ---- the user's side -------------------------------------------------------------

    async def submit(
        self, raw_spec: Mapping[str, Any], dataset: str, config: TrainingConfig, owner: str
    ) -> NetworkRecord:
        """Validate and record a training job; its VNodes are placed by the next reconcile."""
        net = parse_spec(raw_spec)
        if not self.blobs.exists(dataset):
            raise NotFound(f"no dataset blob {dataset}", field="dataset")
        check_dataset(self.blobs.read(dataset), net)
        now = self.clock()
        rec = NetworkRecord(
            id=new_id("n"),
            name=net.name,
            owner=owner,
            state=NetworkState.RUNNING,
            spec=dict(raw_spec),
            config=config,
            dataset=dataset,
            created_at=now,
            updated_at=now,
        )
        await self.store.add_network(rec, [v.id for v in net.vnodes])
        self.live[rec.id] = _Live(rec, net, {v.id: VNodeState(rec.id, v.id) for v in net.vnodes})
        self._changed.set()
        return rec

    def _warm_eval(self) -> None:
        """Load torch for the held-out check, off the loop, once an untrusted node could host a VNode.

        On a busy machine that takes tens of seconds; paid at the first checkpoint
        it would leave a node poisoning its updates unjudged meanwhile. A pool of
        trusted nodes never pays it here (only when a network completes).
        """
        if self._warming is None:
            self._warming = asyncio.create_task(asyncio.to_thread(_import_eval), name="phage-training-warm")
            self._warming.add_done_callback(lambda _: self._changed.set())  # untrusted hosts may be placed

    @property
    def can_judge(self) -> bool:
        """Is the held-out check ready (torch imported)? Untrusted nodes get no VNode before it is."""
        return self._warming is not None and self._warming.done()

    async def get(self, network_id: str) -> tuple[NetworkRecord, list[VNodeState]]:
        """A training job and its VNodes (live figures where the network runs)."""
        live = self.live.get(network_id)
        if live is not None:
            return live.record, list(live.states.values())
        rec = await self.store.get_network(network_id)
        return rec, await self.store.vnode_states(network_id)

    def rates(self, network_id: str) -> dict[str, float]:
        """Samples per second per VNode, as last reported."""
        live = self.live.get(network_id)
        return dict(live.rates) if live else {}

    def frames(self, network_id: str) -> dict[str, tuple[int, int, int]]:
        """Frames each VNode passed on: node to node, through the relay, in memory (as last reported)."""
        live = self.live.get(network_id)
        return dict(live.frames) if live else {}

    async def cancel(self, network_id: str) -> NetworkRecord:
        """Stop a training job; its hosts drop their VNodes."""
        rec, _ = await self.get(network_id)
        if rec.state is not NetworkState.RUNNING:
            raise Conflict(f"network {network_id} is already {rec.state.value}", field="id")
        await self._finish(network_id, NetworkState.CANCELLED, None, "cancelled")
        return (await self.get(network_id))[0]

    # ---- the node's side -------------------------------------------------------------

    async def subscribe(self, node_id: str, address: str = "") -> AsyncIterator[Order]:
        """Orders for one node (whose data plane listens at ``address``), for as long as it listens."""
        queue: asyncio.Queue[Order] = asyncio.Queue()
        self.addresses[node_id] = address
        old = self.subscribers.get(node_id)
        self.subscribers[node_id] = queue
        if old is not None:
            old.put_nowait(DropOrder("", ""))  # wakes and ends the older stream
        for live in self.live.values():  # resume what it hosts (after either side restarted)
            for v in live.states.values():
                if v.node_id == node_id and not v.done:
                    live.lost_since.pop(v.vnode_id, None)
                    queue.put_nowait(self._host_order(live, v))
            if any(v.node_id == node_id for v in live.states.values()):
                self._send_orders(live, set())  # its neighbours learn where it listens now
        self._changed.set()
        try:
            while True:
                order = await queue.get()
                if self.subscribers.get(node_id) is not queue:
                    return
                yield order
        finally:
            if self.subscribers.get(node_id) is queue:
                del self.subscribers[node_id]
                now = self.clock()
                for live in self.live.values():
                    for v in live.states.values():
                        if v.node_id == node_id and not v.done:
                            live.lost_since.setdefault(v.vnode_id, now)
                self._changed.set()

    def _hosted(self, node_id: str, network_id: str, vnode_id: str, generation: int) -> _Live:
        live = self.live.get(network_id)
        if live is None:
            raise Conflict(f"network {network_id} is not running", field="network_id")
        v = live.states.get(vnode_id)
        if v is None:
            raise NotFound(f"network {network_id} has no VNode {vnode_id!r}", field="vnode_id")
        if v.node_id != node_id or v.generation != generation:
            raise PermissionDenied(
                f"VNode {vnode_id} of {network_id} is not hosted by this node (generation {generation})",
                field="vnode_id",
            )
        return live

    async def open_stream(self, node_id: str, network_id: str, vnode_id: str, generation: int) -> Inbox:
        """Connect a hosted VNode's stream; returns the inbox its frames come from."""
        live = self._hosted(node_id, network_id, vnode_id, generation)
        inbox = live.inboxes.setdefault(vnode_id, Inbox())
        await inbox.attach(generation)
        for src in live.net.vnode(vnode_id).inputs:
            if src in live.ended:  # its end marker may have gone to an earlier host
                await inbox.put(Frame(src, -1, b"", True), force=True)
        return inbox

    async def relay(
        self, node_id: str, network_id: str, vnode_id: str, generation: int, frame: Frame
    ) -> None:
        """Pass a producer's frame on to each consumer's inbox (waiting while one is full)."""
        live = self._hosted(node_id, network_id, vnode_id, generation)
        if frame.end:
            live.ended.add(vnode_id)
        for consumer in live.net.consumers(vnode_id):
            if live.states[consumer].done:
                continue
            inbox = live.inboxes.setdefault(consumer, Inbox())
            await inbox.put(replace(frame, vnode_id=vnode_id), force=frame.end)

    async def report(self, node_id: str, r: Report) -> bool:
        """Record a host's progress; returns False when the hosting is over (stale or ended)."""
        try:
            live = self._hosted(node_id, r.network_id, r.vnode_id, r.generation)
        except (Conflict, PermissionDenied):
            return False
        facts = self.facts(node_id)
        trusted = facts is not None and facts.trusted
        v = live.states[r.vnode_id]
        if r.error:
            log.warning("VNode %s/%s failed on %s: %s", r.network_id, r.vnode_id, node_id[:8], r.error)
            await self._finish(r.network_id, NetworkState.FAILED, None, f"VNode {r.vnode_id}: {r.error}")
            return False
        if r.checkpoint and not self.blobs.exists(r.checkpoint):
            raise InvalidInput("report names a checkpoint that was never uploaded", field="checkpoint_sha256")
        history = list(v.history)
        if r.step and (not history or history[-1][0] != r.step):
            history.append((r.step, r.loss))
        v = replace(
            v,
            step=max(v.step, r.step),
            last_batch=max(v.last_batch, r.last_batch),
            history=tuple(thin_history(history)),
            done=r.done,
            updated_at=self.clock(),
        )
        if r.checkpoint:
            v = replace(v, checkpoint=r.checkpoint, checkpoint_step=r.step)
            if trusted:
                v = replace(v, validated_checkpoint=r.checkpoint)
            else:
                self._await_checks(
                    live, HoldoutJob(r.network_id, r.vnode_id, node_id, r.generation, r.checkpoint, r.step)
                )
        live.states[r.vnode_id] = v
        live.rates[r.vnode_id] = r.samples_per_s
        live.frames[r.vnode_id] = r.frames
        live.samples[r.vnode_id] = r.samples
        if r.check_before and r.check_inputs and r.check_after:
            check = PendingCheck(
                new_id("k"),
                r.network_id,
                r.vnode_id,
                node_id,
                r.generation,
                r.check_seq,
                r.check_before,
                r.check_inputs,
                r.check_after,
                v.checkpoint,
            )
            self.checks[check.id] = check
            self._changed.set()
        if r.checkpoint or r.done:
            await self.store.save_vnode(v)
        if r.done:
            live.ended.add(r.vnode_id)  # consumers connecting from now on start with its end
            if all(s.done for s in live.states.values()):
                await self._complete(live)
        return True

    async def check_result(self, node_id: str, check_id: str, digest: str) -> None:
        """A checker's recomputation of a step; the verdict once it is decided (see :func:`judge`)."""
        check = self.checks.get(check_id)
        if check is None or check.checker != node_id:
            return
        check.results[node_id] = digest
        check.checker = ""
        verdict = judge(check.claimed, check.results, self._trusted)
        if verdict is None:
            self._changed.set()  # two untrusted nodes disagree: ask a third
            return
        del self.checks[check_id]
        live = self.live.get(check.network_id)
        if live is None:
            return
        guilty = [check.host if g == "host" else g for g in verdict[0]]
        honest_digest = verdict[1]
        if not guilty:
            self._passed(live, check.vnode_id, check.host, check.checkpoint, recompute=True)
            return
        for culprit in guilty:
            evidence = {
                "node": culprit,
                "network": check.network_id,
                "vnode": check.vnode_id,
                "batch": check.seq,
                "host": check.host,
                "claimed_state": check.claimed,
                "recomputed": dict(check.results),
                "agreed_state": honest_digest,
            }
            self.caught.append(evidence)
            what = "update" if culprit == check.host else "recomputation"
            reason = (
                f"training {what} of VNode {check.vnode_id} (network {check.network_id}, batch {check.seq}) "
                f"disagrees with the state other nodes agree on ({honest_digest[:12]})"
            )
            log.warning("quarantining %s: %s", culprit[:12], reason)
            await self.quarantine(culprit, reason)
            await self._roll_back(culprit)

    # ---- the held-out check (see training_checks) --------------------------------------

    def _await_checks(self, live: _Live, job: HoldoutJob) -> None:
        """Keep an untrusted checkpoint unvalidated until its checks pass; queue its held-out check."""
        live.passes[(job.vnode_id, job.checkpoint)] = Passes(job.step)
        mine = sorted((p.step, key) for key, p in live.passes.items() if key[0] == job.vnode_id)
        for _, key in mine[:-KEPT_PASSES]:
            del live.passes[key]
        self.holdout.put(job)

    def _passed(
        self, live: _Live, vnode_id: str, host: str, checkpoint: str, *, recompute: bool = False
    ) -> None:
        """Note a passed check; a checkpoint that passed all it needs becomes the validated one."""
        p = live.passes.get((vnode_id, checkpoint))
        if p is None:
            return
        if recompute:
            p.recompute = True
        else:
            p.holdout = True
        v = live.states.get(vnode_id)
        if v is None or v.node_id != host or not p.complete(live.record.config.check_rate > 0):
            return
        live.states[vnode_id] = replace(v, validated_checkpoint=checkpoint)
        for key in [k for k, q in live.passes.items() if k[0] == vnode_id and q.step <= p.step]:
            del live.passes[key]  # older checkpoints can no longer become the validated one

    async def _holdout_loop(self) -> None:
        while True:
            rank = {(nid, v.id): i for nid, live in self.live.items() for i, v in enumerate(live.net.vnodes)}
            job = await self.holdout.take(rank)
            try:
                await self.judge_holdout(job)
            except Exception:
                log.exception("held-out check of %s/%s failed to run", job.network_id, job.vnode_id)

    async def judge_holdout(self, job: HoldoutJob) -> HoldoutVerdict | None:
        """Judge one untrusted checkpoint on held-out rows; quarantine and roll back its host if it regressed.

        The reference is the VNode's last checkpoint that passed this check (at
        first its validated checkpoint, or its initial weights): it only ever moves
        to a checkpoint no worse than itself. None when the checkpoint cannot be
        judged: an ancestor has no checkpoint to make the inputs from yet, or an
        ancestor was rolled back since (the VNode's next checkpoint is judged instead).
        """
        live = self.live.get(job.network_id)
        if live is None or job.vnode_id not in live.states:
            return None
        upstream: dict[str, str] = {}
        for a in live.net.ancestors(job.vnode_id):
            upstream[a] = live.states[a].checkpoint
            if not upstream[a]:
                return None
        if job.vnode_id in live.rebase:
            # it trained on inputs from a VNode since rolled back: measured on the inputs of the
            # rolled-back lineage it would look worse through no fault of its own (and be judged
            # on nothing it did), so it only sets the bar for its next checkpoints
            live.rebase.discard(job.vnode_id)
            live.references[job.vnode_id] = job.checkpoint
            return None
        reference = live.references.get(job.vnode_id, live.states[job.vnode_id].validated_checkpoint)
        rollbacks = live.rollbacks
        cfg = live.record.config

        def losses() -> tuple[float, float]:
            from phage.coordinator.training_eval import holdout_losses

            return holdout_losses(
                live.net,
                self.blobs.read(live.record.dataset),
                job.vnode_id,
                seed=cfg.seed,
                upstream={a: self.blobs.read(d) for a, d in upstream.items()},
                reference=self.blobs.read(reference) if reference else None,
                candidate=self.blobs.read(job.checkpoint),
                rows=HOLDOUT_ROWS,
            )

        verdict = HoldoutVerdict(*await asyncio.to_thread(losses), bound=cfg.holdout_bound)
        log.debug(
            "held-out loss of %s/%s at step %d on %s: %.4g (reference %.4g)",
            job.network_id,
            job.vnode_id,
            job.step,
            job.host[:12],
            verdict.loss,
            verdict.reference_loss,
        )
        if live.rollbacks != rollbacks:
            return None  # a VNode was rolled back meanwhile: the inputs may belong to a lineage now gone
        v = live.states[job.vnode_id]
        if verdict.improved and (v.node_id, v.generation) == (job.host, job.generation):
            live.references[job.vnode_id] = job.checkpoint
            self._passed(live, job.vnode_id, job.host, job.checkpoint)
        if not verdict.regressed:
            return verdict
        if any(e["node"] == job.host for e in self.caught):
            return verdict  # caught already (by this check or a recomputation): once is enough
        self.caught.append(evidence(job, reference, verdict, HOLDOUT_ROWS))
        why = reason(job, verdict, HOLDOUT_ROWS)
        log.warning("quarantining %s: %s", job.host[:12], why)
        await self.quarantine(job.host, why)
        await self._roll_back(job.host)
        return verdict

    def _trusted(self, node_id: str) -> bool:
        facts = self.facts(node_id)
        return facts is not None and facts.trusted

    def may_read(self, node_id: str, digest: str) -> bool:
        """Is this blob part of training work the node holds (dataset, its checkpoints, a check)?"""
        for check in self.checks.values():
            if check.checker == node_id and digest in (check.before, check.inputs):
                return True
        for live in self.live.values():
            for v in live.states.values():
                if v.node_id != node_id:
                    continue
                if digest == live.record.dataset or digest in (v.checkpoint, v.validated_checkpoint):
                    return True
        return False

    # ---- placement -------------------------------------------------------------------

    async def _roll_back(self, node_id: str) -> None:
        """Move every VNode a caught node hosts back to its last validated checkpoint, unhosted."""
        for live in self.live.values():
            for vid, v in list(live.states.items()):
                if v.node_id == node_id and not v.done:
                    rolled = replace(
                        v,
                        node_id="",
                        generation=v.generation + 1,
                        checkpoint=v.validated_checkpoint,
                        step=0 if not v.validated_checkpoint else v.step,
                    )
                    live.states[vid] = rolled
                    for key in [k for k in live.passes if k[0] == vid]:
                        del live.passes[key]
                    live.references[vid] = rolled.checkpoint
                    live.rebase.discard(vid)
                    live.rebase.update(d.id for d in live.net.vnodes if vid in live.net.ancestors(d.id))
                    live.rollbacks += 1
                    await self.store.save_vnode(rolled)
                    queue = self.subscribers.get(node_id)
                    if queue is not None:
                        queue.put_nowait(DropOrder(live.record.id, vid))
        for cid in [c.id for c in self.checks.values() if c.host == node_id]:
            del self.checks[cid]
        self._changed.set()

    def _host_order(self, live: _Live, v: VNodeState) -> HostOrder:
        facts = self.facts(v.node_id)
        reads_data = INPUT in live.net.vnode(v.vnode_id).inputs
        return HostOrder(
            network_id=live.record.id,
            vnode_id=v.vnode_id,
            spec=live.record.spec,
            dataset=live.record.dataset if reads_data else "",
            checkpoint=v.checkpoint,
            config=live.record.config,
            check_rate=0.0 if facts is not None and facts.trusted else live.record.config.check_rate,
            generation=v.generation,
            replay_from=replay_from(live.net, live.states, v.vnode_id, self.batches),
            routes=routes(live.net, live.states, v.vnode_id, self.addresses),
        )

    def _send_orders(self, live: _Live, fresh: set[str]) -> None:
        """Order ``fresh`` VNodes' hosts to (re)start them; tell the others where neighbours live now."""
        for v in live.states.values():
            queue = self.subscribers.get(v.node_id) if v.node_id and not v.done else None
            if queue is not None:
                order = self._host_order(live, v)
                queue.put_nowait(order if v.vnode_id in fresh else replace(order, routes_only=True))

    async def _restart_upstream(self, live: _Live, moved: set[str]) -> None:
        """Restart the hosted producers of VNodes being placed again from their checkpoints, replaying.

        A VNode that lost its host, or was rolled back to its validated checkpoint, resumes
        from that checkpoint; producers that kept running would go on from where they are and
        the batches in between would never reach it. (A network placed whole has no hosted
        producer: nothing restarts.)
        """
        upstream = {a for vid in moved for a in live.net.ancestors(vid)} - moved
        bumped = [a for a in sorted(upstream) if not live.states[a].done and live.states[a].node_id]
        for aid in bumped:  # first, so the relay refuses frames of the hostings ending here
            live.states[aid] = replace(live.states[aid], generation=live.states[aid].generation + 1)
        for vid in moved:  # what its producers replay, in order: frames left from before must not overtake
            if vid in live.inboxes and not any(live.states[p].done for p in live.net.producers(vid)):
                await live.inboxes[vid].drop_batches()
        for aid in bumped:
            await self.store.save_vnode(live.states[aid])

    def _candidates(self) -> list[HostFacts]:
        out = []
        for node_id in self.subscribers:
            facts = self.facts(node_id)
            if facts is None or not facts.usable:
                continue
            if not facts.trusted and not self.can_judge:
                self._warm_eval()  # placed before its checkpoints can be judged, it would train unwatched
                continue
            out.append(facts)
        return out

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), RECONCILE_S)
            self._changed.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("training reconcile failed")

    async def reconcile(self) -> None:
        """Give every hostless VNode a host (:func:`phage.scheduler.vnodes.place` decides where, by
        the work each VNode does, see :meth:`NetworkSpec.cost`) and every waiting check a checker."""
        now = self.clock()
        candidates = self._candidates()
        load: dict[str, int] = {c.node_id: 0 for c in candidates}
        for live in self.live.values():
            for v in live.states.values():
                if v.node_id in load and not v.done:
                    load[v.node_id] += live.net.cost(v.vnode_id)
        before = {
            (lv.record.id, vid): v.generation for lv in self.live.values() for vid, v in lv.states.items()
        }
        try:
            await self._move(candidates, load, now)
        finally:  # orders go out once every move is decided (their routes are whole), even if one failed
            for live in self.live.values():
                fresh = {
                    vid for vid, v in live.states.items() if v.generation != before.get((live.record.id, vid))
                }
                if fresh:
                    self._send_orders(live, fresh)
        for check in self.checks.values():
            if check.checker and check.checker in self.subscribers:
                continue
            others = [c for c in candidates if c.node_id != check.host and c.node_id not in check.results]
            if not others:
                continue
            pick = min(others, key=lambda c: (not c.trusted, random.random()))
            check.checker = pick.node_id
            net_live = self.live.get(check.network_id)
            if net_live is None:
                continue
            self.subscribers[pick.node_id].put_nowait(
                CheckOrder(
                    check.id,
                    check.network_id,
                    check.vnode_id,
                    net_live.record.spec,
                    check.before,
                    check.inputs,
                    check.seq,
                )
            )

    async def _move(self, candidates: list[HostFacts], load: dict[str, int], now: float) -> None:
        """Decide a host for every VNode that has none (or lost its own) and record it."""
        hostless: dict[str, list[str]] = {}
        for live in list(self.live.values()):
            for vid, v in list(live.states.items()):
                if v.done:
                    continue
                if v.node_id:
                    facts = self.facts(v.node_id)
                    lost = live.lost_since.get(vid)
                    if (facts is not None and facts.usable) and (
                        lost is None or now - lost < self.lost_after_s
                    ):
                        continue
                    log.info("VNode %s/%s lost its host %s; relocating", live.record.id, vid, v.node_id[:8])
                    v = replace(v, node_id="", generation=v.generation + 1)
                    live.states[vid] = v
                    live.lost_since.pop(vid, None)
                hostless.setdefault(live.record.id, []).append(vid)
        if not candidates:
            return
        whole: list[list[Unhosted]] = []
        single: list[Unhosted] = []
        for network_id, vids in hostless.items():
            live = self.live[network_id]
            # a VNode placed now resumes from its checkpoint: what feeds it must replay
            await self._restart_upstream(live, set(vids))
            units = [Unhosted(network_id, vid, live.net.cost(vid)) for vid in vids]
            if vids == [v.id for v in live.net.vnodes if not live.states[v.id].done]:
                whole.append(units)
            else:
                single.extend(units)
        hosts = [Host(c.node_id, c.trusted) for c in candidates]
        for u, node in place(whole, single, hosts, load):
            states = self.live[u.network_id].states
            v = replace(states[u.vnode_id], node_id=node, generation=states[u.vnode_id].generation + 1)
            states[u.vnode_id] = v
            await self.store.save_vnode(v)

    async def _complete(self, live: _Live) -> None:
        result: dict[str, Any] = {
            "steps": {vid: v.step for vid, v in live.states.items()},
            "samples": dict(live.samples),
            "frames": {
                vid: dict(zip(("direct", "relayed", "local"), f, strict=True))
                for vid, f in live.frames.items()
            },
        }
        from phage.coordinator.training_eval import test_accuracy

        result["accuracy"] = await asyncio.to_thread(
            test_accuracy,
            live.net,
            self.blobs.read(live.record.dataset),
            {vid: self.blobs.read(v.checkpoint) for vid, v in live.states.items()},
        )
        await self._finish(live.record.id, NetworkState.COMPLETED, result)

    async def _finish(
        self, network_id: str, state: NetworkState, result: dict[str, Any] | None, error: str = ""
    ) -> None:
        live = self.live.pop(network_id, None)
        now = self.clock()
        await self.store.finish_network(network_id, state, now, result, error)
        if live is None:
            return
        for inbox in live.inboxes.values():
            await inbox.close()
        for v in live.states.values():
            await self.store.save_vnode(v)
            queue = self.subscribers.get(v.node_id)
            if queue is not None and not v.done:
                queue.put_nowait(DropOrder(network_id, v.vnode_id))
        for cid in [c.id for c in self.checks.values() if c.network_id == network_id]:
            del self.checks[cid]
        self.holdout.drop_network(network_id)


def _import_eval() -> None:
    try:
        from phage.coordinator.training_eval import warm
    except ImportError:  # without torch nothing is judged; completing a network will fail loudly
        return
    warm()


def check_dataset(blob: bytes, net: NetworkSpec) -> None:
    """Refuse a dataset that does not fit the network's first VNodes."""
    try:
        from phage.training.data import load_dataset
    except ImportError:
        raise Unavailable(
            "training needs numpy, torch and safetensors on the coordinator: install phage[training]"
        ) from None
    load_dataset(blob, net.input_shape, net.classes)
