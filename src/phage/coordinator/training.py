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
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from phage.domain.ids import new_id
from phage.domain.networks import (
    NetworkRecord,
    NetworkState,
    TrainingConfig,
    VNodeState,
    thin_history,
)
from phage.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unavailable
from phage.store.blobs import BlobStore
from phage.store.sql_training import TrainingRecords
from phage.training.spec import INPUT, NetworkSpec, parse_spec

log = logging.getLogger("phage.training")

INBOX_FRAMES = 32
"""Activation frames buffered per consumer before its producer is held back."""
RECONCILE_S = 0.2


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What placement needs to know of a node."""

    node_id: str
    trusted: bool
    usable: bool
    """Online, admitted, not quarantined, not draining."""
    online: bool = True
    """Counted alive by heartbeats (a node that misses a few gets a grace period, not a move)."""


@dataclass(frozen=True, slots=True)
class HostOrder:
    """Host (or resume) one VNode."""

    network_id: str
    vnode_id: str
    spec: Mapping[str, Any]
    dataset: str
    checkpoint: str
    config: TrainingConfig
    check_rate: float
    generation: int


@dataclass(frozen=True, slots=True)
class DropOrder:
    """Stop hosting a VNode."""

    network_id: str
    vnode_id: str


@dataclass(frozen=True, slots=True)
class CheckOrder:
    """Recompute one step another node made."""

    check_id: str
    network_id: str
    vnode_id: str
    spec: Mapping[str, Any]
    before: str
    inputs: str
    seq: int


Order = HostOrder | DropOrder | CheckOrder


@dataclass(frozen=True, slots=True)
class Frame:
    """An activation frame as relayed: opaque tensor bytes."""

    vnode_id: str
    seq: int
    tensor: bytes
    end: bool


@dataclass(frozen=True, slots=True)
class Report:
    """What a host says of its VNode."""

    network_id: str
    vnode_id: str
    generation: int
    step: int
    last_batch: int
    loss: float
    samples_per_s: float
    samples: int
    checkpoint: str = ""
    done: bool = False
    error: str = ""
    check_seq: int = -1
    check_before: str = ""
    check_inputs: str = ""
    check_after: str = ""


class Inbox:
    """Frames bound for one VNode, kept across its hosts: a relocated VNode's new host drains them.

    Bounded, so a VNode that is slow or being moved holds its producers back rather
    than losing batches or piling up memory; only the reader of the current
    placement generation may take frames (a stale host's stream gets ``None``).
    """

    def __init__(self, capacity: int = INBOX_FRAMES) -> None:
        self.frames: collections.deque[Frame] = collections.deque()
        self.capacity = capacity
        self.generation = -1
        self.closed = False
        self._cond = asyncio.Condition()

    async def put(self, frame: Frame, *, force: bool = False) -> None:
        """Add a frame, waiting for room (``force``: an end marker, never held back)."""
        async with self._cond:
            if not force:
                await self._cond.wait_for(lambda: self.closed or len(self.frames) < self.capacity)
            if not self.closed:
                self.frames.append(frame)
                self._cond.notify_all()

    async def get(self, generation: int) -> Frame | None:
        """The next frame for the reader of ``generation``; None once that reader is stale."""
        async with self._cond:
            await self._cond.wait_for(
                lambda: self.closed or self.generation != generation or bool(self.frames)
            )
            if self.closed or self.generation != generation:
                return None
            frame = self.frames.popleft()
            self._cond.notify_all()
            return frame

    async def attach(self, generation: int) -> None:
        """Make ``generation``'s reader the only one (older readers end)."""
        async with self._cond:
            self.generation = generation
            self._cond.notify_all()

    async def close(self) -> None:
        """Release every waiting producer and reader for good."""
        async with self._cond:
            self.closed = True
            self.frames.clear()
            self._cond.notify_all()


@dataclass(slots=True)
class _Check:
    id: str
    network_id: str
    vnode_id: str
    host: str
    generation: int
    seq: int
    before: str
    inputs: str
    claimed: str
    checkpoint: str
    """The host's newest checkpoint when the step was made: validated if the check passes."""
    checker: str = ""
    results: dict[str, str] = field(default_factory=dict)
    """Recomputed digest per checker so far."""


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
        self.checks: dict[str, _Check] = {}
        self.caught: list[dict[str, Any]] = []
        """Evidence of every node caught, newest last (also in the quarantine reason)."""
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Load running networks (their VNodes get hosts again as nodes subscribe)."""
        for rec in await self.store.list_networks(NetworkState.RUNNING, limit=10_000):
            states = {v.vnode_id: v for v in await self.store.vnode_states(rec.id)}
            live = _Live(rec, parse_spec(rec.spec), states)
            now = self.clock()
            for v in states.values():
                if v.node_id and not v.done:
                    live.lost_since[v.vnode_id] = now  # hosts get one grace period to resubscribe
                if v.done:
                    live.ended.add(v.vnode_id)
            self.live[rec.id] = live
        self._task = asyncio.create_task(self._reconcile_loop(), name="phage-training")

    async def stop(self) -> None:
        """Stop placing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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

    async def cancel(self, network_id: str) -> NetworkRecord:
        """Stop a training job; its hosts drop their VNodes."""
        rec, _ = await self.get(network_id)
        if rec.state is not NetworkState.RUNNING:
            raise Conflict(f"network {network_id} is already {rec.state.value}", field="id")
        await self._finish(network_id, NetworkState.CANCELLED, None, "cancelled")
        return (await self.get(network_id))[0]

    # ---- the node's side -------------------------------------------------------------

    async def subscribe(self, node_id: str) -> AsyncIterator[Order]:
        """Orders for one node, for as long as it listens."""
        queue: asyncio.Queue[Order] = asyncio.Queue()
        old = self.subscribers.get(node_id)
        self.subscribers[node_id] = queue
        if old is not None:
            old.put_nowait(DropOrder("", ""))  # wakes and ends the older stream
        for live in self.live.values():  # resume what it hosts (after either side restarted)
            for v in live.states.values():
                if v.node_id == node_id and not v.done:
                    live.lost_since.pop(v.vnode_id, None)
                    queue.put_nowait(self._host_order(live, v))
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
        live.states[r.vnode_id] = v
        live.rates[r.vnode_id] = r.samples_per_s
        live.samples[r.vnode_id] = r.samples
        if r.check_before and r.check_inputs and r.check_after:
            check = _Check(
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
            v = live.states.get(check.vnode_id)
            if v is not None and v.node_id == check.host and check.checkpoint:
                live.states[check.vnode_id] = replace(v, validated_checkpoint=check.checkpoint)
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
        )

    def _candidates(self) -> list[HostFacts]:
        out = []
        for node_id in self.subscribers:
            facts = self.facts(node_id)
            if facts is not None and facts.usable:
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
        """Give every hostless VNode a host and every waiting check a checker."""
        now = self.clock()
        candidates = self._candidates()
        load: dict[str, int] = {c.node_id: 0 for c in candidates}
        for live in self.live.values():
            for v in live.states.values():
                if v.node_id in load and not v.done:
                    load[v.node_id] += 1
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
                if not candidates:
                    continue
                pick = min(candidates, key=lambda c: (not c.trusted, load[c.node_id], random.random()))
                load[pick.node_id] += 1
                v = replace(v, node_id=pick.node_id, generation=v.generation + 1)
                live.states[vid] = v
                await self.store.save_vnode(v)
                self.subscribers[pick.node_id].put_nowait(self._host_order(live, v))
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

    async def _complete(self, live: _Live) -> None:
        result: dict[str, Any] = {
            "steps": {vid: v.step for vid, v in live.states.items()},
            "samples": dict(live.samples),
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


def check_dataset(blob: bytes, net: NetworkSpec) -> None:
    """Refuse a dataset that does not fit the network's first VNodes."""
    try:
        from phage.training.data import load_dataset
    except ImportError:
        raise Unavailable(
            "training needs numpy, torch and safetensors on the coordinator: install phage[training]"
        ) from None
    load_dataset(blob, net.input_shape, net.classes)


def judge(
    claimed: str, results: Mapping[str, str], trusted: Callable[[str], bool]
) -> tuple[list[str], str] | None:
    """Who is wrong about a step: ``(guilty nodes, the state agreed on)``, or None while undecided.

    One trusted checker decides alone. Untrusted checkers must be two that agree:
    the host is guilty when two agree against its claim; a checker is guilty when
    it disagrees with a state that the host and another checker agree on.
    """
    for node, digest in results.items():
        if trusted(node):
            return ([] if digest == claimed else ["host"], digest)
    agree = [n for n, d in results.items() if d == claimed]
    if agree:
        return ([n for n, d in results.items() if d != claimed], claimed)
    digests = list(results.values())
    for d in set(digests):
        if digests.count(d) >= 2:
            return (["host"] + [n for n, x in results.items() if x != d], d)
    return None
