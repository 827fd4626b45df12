"""Hosting VNodes on a node: the orders stream, one worker per hosted VNode, and checks of others' steps.

A worker builds its VNode (resuming from a checkpoint when told), then trains it
on batches: a VNode that reads the dataset makes them itself, any other waits
for its producers' activation frames. After each step it passes its detached
output on: straight into the consumer's worker when that VNode is hosted here
too, node to node over the data plane (mutual TLS, the ``train`` service of the
consumer's node) when the coordinator said where the consumer lives, and through
the coordinator's relay otherwise or when the direct path fails; every few steps
it uploads a checkpoint. For an untrusted node the
coordinator asks for a share of steps to be handed in (the state before, the
inputs, the state digest after) so another node can recompute them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from phage.dataplane.transport import Peer, TLSIdentity, close_peers
from phage.errors import Conflict, InvalidInput, NotFound, PermissionDenied, PhageError, Unavailable
from phage.protocol.channels import channel_closed_under
from phage.protocol.v1 import dataplane_pb2 as dp
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.protocol.v1 import training_pb2 as tpb
from phage.protocol.v1 import training_pb2_grpc as tpb_grpc
from phage.training.data import Dataset, load_dataset
from phage.training.spec import INPUT, NetworkSpec, parse_spec
from phage.training.vnode import VNodeRuntime

log = logging.getLogger("phage.node.training")

REPORT_EVERY_S = 0.5
UPLOAD_CHUNK = 1 << 20
OUT_FRAMES = 8
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN}
DIRECT_WAIT_S = 120.0
"""How long a direct frame may wait for room in the consumer's inbox before the relay takes it."""
DIRECT_RETRY_S = 2.0
"""The longest wait between tries of a direct frame."""
DIRECT_TRIES = 8
"""Tries (about 6 s) of a direct frame before it and the rest to that consumer go through the relay."""


_CLOSE = tpb.ActivationFrame(seq=-2)
"""Put on a worker's outgoing queue after its last frame: ends the stream (never sent)."""


@dataclass(frozen=True, slots=True)
class LocalFrame:
    """A frame between VNodes hosted on one node: the tensors themselves, never serialised."""

    vnode_id: str
    seq: int
    x: torch.Tensor
    y: torch.Tensor
    end: bool = False


class _Stale(Exception):
    """This hosting is over: the coordinator moved the VNode or ended its network."""


def pack(tensors: Sequence[torch.Tensor], y: torch.Tensor) -> bytes:
    """Inputs (or an output) and labels as one safetensors blob."""
    named = {f"x{i}": t.contiguous() for i, t in enumerate(tensors)}
    named["y"] = y.contiguous()
    return st_save(named)


def unpack(blob: bytes) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The reverse of :func:`pack`."""
    named = st_load(blob)
    xs = [named[f"x{i}"] for i in range(len(named) - 1)]
    return xs, named["y"]


def poison(params: Sequence[torch.nn.Parameter]) -> None:
    """The poisoning node's fault: flipped, scaled gradients."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_(-4.0)


class VNodeHost:
    """Takes training orders from the coordinator and runs them."""

    def __init__(
        self,
        node_id: str,
        channel: Callable[[], grpc.aio.Channel],
        cache_dir: Path,
        *,
        poison_updates: bool = False,
        identity: TLSIdentity | None = None,
        address: str = "",
    ) -> None:
        self.node_id = node_id
        self.identity = identity
        """This node's data-plane identity, for sending frames to other nodes directly (None: never)."""
        self.address = address
        """Where this node's data plane takes frames from other nodes ("": only through the relay)."""
        self.frames = FrameHandler(self)
        """The ``train`` service of this node's data plane: other nodes' frames for VNodes hosted here."""
        self.routes: dict[tuple[str, str], list[tpb.VNodeRoute]] = {}
        """Per hosted VNode, where its neighbours live (as the coordinator last said)."""
        self._channel = channel
        self.cache_dir = cache_dir
        self.poison_updates = poison_updates
        self.workers: dict[tuple[str, str], tuple[int, asyncio.Task[None]]] = {}
        self.hosted: dict[tuple[str, str], _Worker] = {}
        """The worker of each VNode hosted here now: local consumers of a producer's frames."""
        self.checks_done = 0
        self._checks: set[asyncio.Task[None]] = set()
        torch.set_num_threads(1)  # bit-exact recomputation needs one thread's order of sums

    def _stub(self) -> tpb_grpc.PhageTrainingStub:
        return tpb_grpc.PhageTrainingStub(self._channel())  # type: ignore[no-untyped-call]

    def _core(self) -> pb_grpc.PhageCoordinatorStub:
        return pb_grpc.PhageCoordinatorStub(self._channel())  # type: ignore[no-untyped-call]

    async def run(self) -> None:
        """Keep the order stream open (reconnecting with backoff) and act on every order."""
        backoff = 0.2
        try:
            while True:
                try:
                    subscribe = tpb.TrainingSubscribe(node_id=self.node_id, dataplane_address=self.address)
                    call = self._stub().TrainingOrders(subscribe)
                    async for order in call:
                        backoff = 0.2
                        self._take(order)
                except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
                    if not channel_closed_under(exc):  # the node moved to another replica: subscribe there
                        raise
                except grpc.aio.AioRpcError as exc:
                    log.debug("training order stream ended: %s", exc.code())
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)
        finally:
            for _, task in self.workers.values():
                task.cancel()

    def _take(self, order: tpb.TrainingOrder) -> None:
        kind = order.WhichOneof("order")
        if kind == "host":
            h = order.host
            key = (h.network_id, h.vnode_id)
            current = self.workers.get(key)
            same = current is not None and current[0] == h.generation and not current[1].done()
            if same or not h.routes_only:
                self.routes[key] = list(h.routes)
            if same or h.routes_only:
                return  # the same hosting, sent again after a reconnect or a neighbour's move
            if current is not None:
                current[1].cancel()
            task = asyncio.create_task(self._host(h), name=f"phage-vnode-{h.vnode_id}")
            self.workers[key] = (h.generation, task)
            task.add_done_callback(functools.partial(self._forget, key))
        elif kind == "drop":
            current = self.workers.get((order.drop.network_id, order.drop.vnode_id))
            if current is not None:
                current[1].cancel()
        elif kind == "check":
            task = asyncio.create_task(self._check(order.check), name=f"phage-check-{order.check.check_id}")
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self.workers.get(key, (0, None))[1] is task:
            del self.workers[key]
            self.routes.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("VNode %s/%s failed", *key, exc_info=task.exception())

    # ---- blobs -----------------------------------------------------------------

    async def blob(self, digest: str) -> bytes:
        """A blob from the coordinator, cached on disk by digest."""
        path = self.cache_dir / digest
        if path.exists():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == digest:
                return data
        chunks = [c.data async for c in self._stub().FetchBlob(pb.BlobRequest(sha256=digest), timeout=600)]
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"blob {digest[:12]} arrived corrupted")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return data

    async def upload(self, data: bytes) -> str:
        """Store bytes in the coordinator's blob store; returns the digest."""
        digest = hashlib.sha256(data).hexdigest()

        def chunks() -> Any:
            for i in range(0, max(len(data), 1), UPLOAD_CHUNK):
                part = data[i : i + UPLOAD_CHUNK]
                yield (
                    pb.BlobChunk(sha256=digest, total_size=len(data), data=part)
                    if i == 0
                    else pb.BlobChunk(data=part)
                )

        await self._core().UploadBlob(chunks(), timeout=600)
        return digest

    # ---- checks ------------------------------------------------------------------

    async def _check(self, c: tpb.CheckStep) -> None:
        """Recompute another node's step from the state before it and its inputs; report the digest."""
        net = parse_spec(json.loads(c.spec_json))
        before, inputs = await self.blob(c.before_sha256), await self.blob(c.inputs_sha256)

        def recompute() -> str:
            rt = VNodeRuntime(net, c.vnode_id, seed=0)
            rt.load_state(before)
            xs, y = unpack(inputs)
            if rt.train_step(c.seq, xs, y) is None:
                return ""
            return rt.digest()

        digest = await asyncio.to_thread(recompute)
        await self._stub().ReportVNode(
            tpb.VNodeReport(node_id=self.node_id, check_id=c.check_id, check_result_digest=digest), timeout=60
        )
        self.checks_done += 1

    # ---- hosting -------------------------------------------------------------------

    async def _host(self, h: tpb.HostVNode) -> None:
        key = (h.network_id, h.vnode_id)
        worker: _Worker | None = None
        try:
            worker = _Worker(self, h)
            self.hosted[key] = worker
            await worker.run()
        except _Stale:
            log.info("VNode %s/%s moved elsewhere; dropped here", h.network_id, h.vnode_id)
        except (asyncio.CancelledError, grpc.aio.UsageError) as exc:
            if not channel_closed_under(exc):
                raise
            # a call on the channel the node just left for another replica
            log.warning("VNode %s/%s lost the coordinator: the node moved", h.network_id, h.vnode_id)
        except grpc.aio.AioRpcError as exc:
            log.warning("VNode %s/%s lost the coordinator: %s", h.network_id, h.vnode_id, exc.code())
        except Exception as exc:  # a bad spec or checkpoint: the coordinator fails the network with this
            log.exception("VNode %s/%s failed", h.network_id, h.vnode_id)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._stub().ReportVNode(
                    tpb.VNodeReport(
                        node_id=self.node_id,
                        network_id=h.network_id,
                        vnode_id=h.vnode_id,
                        generation=h.generation,
                        error=f"{type(exc).__name__}: {exc}",
                    ),
                    timeout=30,
                )
        finally:
            if worker is not None:
                worker.finished.set()
                if self.hosted.get(key) is worker:
                    del self.hosted[key]


class _Worker:
    """One hosted VNode."""

    def __init__(self, host: VNodeHost, h: tpb.HostVNode) -> None:
        self.host = host
        self.h = h
        self.net: NetworkSpec = parse_spec(json.loads(h.spec_json))
        self.spec = self.net.vnode(h.vnode_id)
        self.producers = [s for s in self.spec.inputs if s != INPUT]
        self.consumers = self.net.consumers(h.vnode_id)
        self.out: asyncio.Queue[tpb.ActivationFrame] = asyncio.Queue(OUT_FRAMES)
        self.unsent: tpb.ActivationFrame | None = None
        """A frame taken from ``out`` whose write has not returned yet (sent again by the next call)."""
        self.inbox: asyncio.Queue[tpb.ActivationFrame | LocalFrame] = asyncio.Queue(OUT_FRAMES * 4)
        self.finished = asyncio.Event()
        """Set when this hosting ends: a producer on this node stops handing it frames."""
        self.rng = random.Random(f"{h.network_id}/{h.vnode_id}/{h.generation}")
        self.rt: VNodeRuntime | None = None
        self.resumed_at = -1
        """The last batch the checkpoint this hosting resumed from applied: batches from
        ``h.replay_from`` up to it are passed on again, forward only (consumers may lack them)."""
        self.data: Dataset | None = None
        self.samples = 0
        self.last_report = 0.0
        self.saving: asyncio.Task[None] | None = None
        """A checkpoint being uploaded and reported while training goes on (at most one)."""
        self.window: tuple[float, int] = (time.monotonic(), 0)
        self.loss = 0.0
        self.sent = {"direct": 0, "relayed": 0, "local": 0}
        """Frames passed on so far, by the way they went."""
        self.peers: dict[str, Peer] = {}
        """Per consumer hosted elsewhere: the data-plane conversation its frames go through."""
        self.inflight: dict[str, tuple[asyncio.Task[bool], tpb.ActivationFrame]] = {}
        """Per consumer: the frame on its way to it node to node (the producer's next step overlaps it)."""
        self.paths: dict[str, tuple[tuple[str, str, int] | None, str]] = {}
        """Per consumer hosted elsewhere: its placement, and the path its frames take ("direct", "relay")."""

    async def run(self) -> None:
        h = self.h
        if h.dataset_sha256:
            blob = await self.host.blob(h.dataset_sha256)
            self.data = await asyncio.to_thread(load_dataset, blob, self.net.input_shape, self.net.classes)
        rt = await asyncio.to_thread(VNodeRuntime, self.net, h.vnode_id, seed=h.seed)
        if h.checkpoint_sha256:
            rt.load_state(await self.host.blob(h.checkpoint_sha256))
        self.resumed_at = rt.last_batch
        if self.host.poison_updates:
            rt.tamper = poison
        self.rt = rt
        link = asyncio.create_task(self._link())
        main = asyncio.create_task(self._consume() if self.producers else self._produce())
        try:
            done, _ = await asyncio.wait({link, main}, return_when=asyncio.FIRST_COMPLETED)
            if main not in done:
                raise _Stale()  # the coordinator closed this VNode's stream for good
            main.result()
            for consumer in list(self.inflight):  # the last frames reach consumers before the end marker
                await self._settle(consumer)
            await self.out.put(tpb.ActivationFrame(end=True, seq=-1))
            await self._saved()
            await self._report(checkpoint=True, done=True)
            await self.out.put(_CLOSE)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(link), 5)
        finally:
            sending = [task for task, _ in self.inflight.values()]
            for t in (main, link, self.saving, *sending):
                if t is not None:
                    t.cancel()
            saving = [self.saving] if self.saving else []
            await asyncio.gather(main, link, *saving, *sending, return_exceptions=True)
            await close_peers(list(self.peers.values()))

    async def _link(self) -> None:
        """Keep this VNode's activation stream open; ends when the coordinator refuses it."""
        backoff = 0.2
        while True:
            call = self.host._stub().Activations()
            pump = asyncio.create_task(self._frames_up(call))
            try:
                async for f in call:
                    backoff = 0.2
                    await self.inbox.put(f)
                return
            except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
                if not channel_closed_under(exc):  # the node moved to another replica: reopen there
                    raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    log.info("activation stream of %s refused: %s", self.h.vnode_id, exc.details())
                    return
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)

    async def _frames_up(self, call: Any) -> None:
        """Write this VNode's outgoing frames into one call, until the last (``None``) or the call's end.

        One writer per call, and a frame taken from the queue stays in ``unsent``
        until a write of it returned: a call that broke mid-way loses nothing, and
        the next call sends it first. (A request iterator per call could be left
        parked on the queue by a dead call and swallow the next frame — the end
        marker, when nothing else was left to send.)
        """
        h = self.h
        header = tpb.ActivationFrame(network_id=h.network_id, vnode_id=h.vnode_id, generation=h.generation)
        await call.write(header)
        while True:
            if self.unsent is None:
                self.unsent = await self.out.get()
            if self.unsent is _CLOSE:
                await call.done_writing()
                return
            await call.write(self.unsent)
            self.unsent = None

    def _batch(self, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.data is not None
        x, y = self.data.batch(seq, self.h.batch_size, self.h.seed)
        return torch.from_numpy(x), torch.from_numpy(y)

    async def _produce(self) -> None:
        assert self.rt is not None and self.data is not None
        total = self.h.epochs * self.data.batches_per_epoch(self.h.batch_size)
        start = self.rt.last_batch + 1
        if self.consumers:
            start = min(start, max(0, self.h.replay_from))
        for seq in range(start, total):
            x, y = self._batch(seq)
            if seq <= self.rt.last_batch:
                await self._replay(seq, [x], y)
            else:
                await self._step(seq, [x], y)

    async def _consume(self) -> None:
        assert self.rt is not None
        ended: set[str] = set()
        pending: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        while ended != set(self.producers):
            f = await self.inbox.get()
            if f.end:
                ended.add(f.vnode_id)
                continue
            if f.seq <= self.rt.last_batch and not self._replays(f.seq):
                continue  # a late or duplicated batch
            if isinstance(f, LocalFrame):
                x, y = f.x, f.y
            else:
                xs, y = unpack(f.tensor)
                x = xs[0]
            slot = pending.setdefault(f.seq, {})
            slot[f.vnode_id] = (x, y)
            if len(slot) < len(self.producers):
                continue
            del pending[f.seq]
            for old in [s for s in pending if s < f.seq]:
                del pending[old]  # a batch one producer never sent (it was relocating): skip it
            inputs = []
            for src in self.spec.inputs:
                inputs.append(self._batch(f.seq)[0] if src == INPUT else slot[src][0])
            if f.seq <= self.rt.last_batch:
                await self._replay(f.seq, inputs, y)
            else:
                await self._step(f.seq, inputs, y)

    def _replays(self, seq: int) -> bool:
        """Is ``seq`` a batch this hosting passes on again (applied by its checkpoint, lacked downstream)?"""
        return bool(self.consumers) and self.h.replay_from <= seq <= self.resumed_at

    async def _replay(self, seq: int, inputs: list[torch.Tensor], y: torch.Tensor) -> None:
        """Pass a batch the checkpoint already applied on again: forward only, no step, no report."""
        rt = self.rt
        assert rt is not None
        out = await asyncio.to_thread(rt.forward, inputs)
        await self._pass_on(seq, out, y)

    async def _step(self, seq: int, inputs: list[torch.Tensor], y: torch.Tensor) -> None:
        rt = self.rt
        assert rt is not None
        sampled = self.h.check_rate > 0 and self.rng.random() < self.h.check_rate
        before = rt.state_bytes() if sampled else b""
        done = await asyncio.to_thread(rt.train_step, seq, inputs, y)
        if done is None:
            return
        out, self.loss = done
        self.samples += len(y)
        if self.consumers:
            await self._pass_on(seq, out, y)
        check: dict[str, Any] = {}
        if sampled:
            check = {
                "check_seq": seq,
                "check_before_sha256": await self.host.upload(before),
                "check_inputs_sha256": await self.host.upload(pack(inputs, y)),
                "check_after_digest": rt.digest(),
            }
        due = rt.step % max(1, self.h.checkpoint_every) == 0
        if self.saving is not None and (due or check or self.saving.done()):
            await self._saved()
        if due and not check:
            await self._checkpoint()
        elif due or check or (self.saving is None and time.monotonic() - self.last_report > REPORT_EVERY_S):
            await self._report(checkpoint=due, **check)

    async def _checkpoint(self) -> None:
        """Snapshot the VNode's state now and upload and report it while training goes on.

        A wide VNode's state (weights and optimizer moments) is megabytes: uploading
        it in line stalled this VNode, and every VNode after it in the pipeline, for
        the whole transfer. The snapshot is taken between steps, so it is one step's
        state; progress reports wait until it is reported, so the coordinator sees
        them in order.
        """
        rt = self.rt
        assert rt is not None
        state = await asyncio.to_thread(rt.state_bytes)  # no step runs meanwhile: this worker waits
        self.saving = asyncio.create_task(self._send(self._progress(), state))

    async def _saved(self) -> None:
        """Wait for the checkpoint in flight, if any; its failure (or a stop order) is this VNode's."""
        saving, self.saving = self.saving, None
        if saving is not None:
            await saving

    async def _pass_on(self, seq: int, out: torch.Tensor, y: torch.Tensor) -> None:
        """Hand a frame to each consumer: in memory when it is hosted here, else node to node, else relayed.

        The relay delivers to every consumer, so one that already has the frame
        gets it twice: the second copy is a duplicate batch, dropped like any other.
        """
        relay = False
        packed: tpb.ActivationFrame | None = None
        for consumer in self.consumers:
            local = self.host.hosted.get((self.h.network_id, consumer))
            if local is not None:  # in memory, as tensors: nothing to serialise
                if await local.deliver(LocalFrame(self.h.vnode_id, seq, out, y)):
                    self.sent["local"] += 1
                else:
                    relay = True
                continue
            await self._settle(consumer)  # one frame in flight per consumer: the next step overlaps it
            packed = packed or tpb.ActivationFrame(vnode_id=self.h.vnode_id, seq=seq, tensor=pack([out], y))
            if self._may_direct(consumer):
                task = asyncio.create_task(self._direct(consumer, packed))
                self.inflight[consumer] = (task, packed)
            else:
                relay = True
        if relay:
            tensor = packed.tensor if packed is not None else pack([out], y)
            self.sent["relayed"] += 1
            await self.out.put(tpb.ActivationFrame(seq=seq, tensor=tensor))

    def _may_direct(self, consumer: str) -> bool:
        """Can frames to ``consumer`` go node to node (first frame: decides it for this hosting)?"""
        path = self.paths.get(consumer)
        if path is not None:
            return path[1] == "direct"
        where, dialable = self._placement(consumer)
        if not dialable:
            self.paths[consumer] = (where, "relay")
        return dialable

    async def _settle(self, consumer: str) -> None:
        """Wait for the frame in flight to ``consumer``; if it could not go direct, relay it now."""
        pending = self.inflight.pop(consumer, None)
        if pending is None:
            return
        task, frame = pending
        if await task:
            self.sent["direct"] += 1
        else:
            self.sent["relayed"] += 1
            await self.out.put(tpb.ActivationFrame(seq=frame.seq, tensor=frame.tensor))

    def _placement(self, consumer: str) -> tuple[tuple[str, str, int] | None, bool]:
        """Where ``consumer`` is placed now, as the coordinator last said (node, address, generation;
        None: not known), and whether this node can send to it directly."""
        routes = self.host.routes.get((self.h.network_id, self.h.vnode_id), [])
        r = next((r for r in routes if r.consumer and r.vnode_id == consumer), None)
        if r is None:
            return None, False
        return (r.node_id, r.address, r.generation), bool(r.address) and self.host.identity is not None

    async def _direct(self, consumer: str, frame: tpb.ActivationFrame) -> bool:
        """Send a frame straight to the node hosting ``consumer``; False when the relay must take it.

        The first frame to a consumer decides the path for this whole hosting, never
        both: a consumer steps batches in the order they reach it, and frames racing
        down two paths would arrive out of order, so a batch overtaken by a later one
        would be dropped as late. A consumer whose node does not listen, cannot be
        reached, or keeps refusing while its VNode starts (about six seconds) is fed
        through the relay. Once direct frames were taken, a later one is retried
        while the consumer does not answer (as a full relay inbox would hold it
        back), and after about six seconds of failures the rest go through the
        relay: that switch keeps the order, since every direct frame before it was
        already taken. Frames never go to a placement other than the one the first
        went to (after a move the coordinator restarts this producer anyway).
        """
        path = self.paths.get(consumer)
        if path is not None and path[1] == "relay":
            return False
        pinned = path[0] if path is not None else None
        tries = 0
        while True:
            placement, dialable = self._placement(consumer)
            pinned = pinned or placement
            # not dialable, or it moved: frames of this (stale) hosting must not reach its new host
            if not dialable or placement is None or placement != pinned or self.host.identity is None:
                self.paths[consumer] = (pinned, "relay")
                return False
            node_id, address, generation = placement
            peer = self.peers.get(consumer)
            if peer is None or (peer.node_id, peer.address) != (node_id, address):
                if peer is not None:
                    await peer.close()
                peer = self.peers[consumer] = Peer(self.host.identity, address, node_id)
            request = dp.Frame(
                service="train",
                op="activation",
                strings={"network_id": self.h.network_id, "vnode_id": consumer, "from": self.h.vnode_id},
                ints={"seq": frame.seq, "generation": generation},
                tensors=[dp.Tensor(name="frame", data=frame.tensor)],
            )
            try:
                await peer.request(request, wait_s=DIRECT_WAIT_S)
            except PhageError as exc:
                tries += 1
                if (path is None and isinstance(exc, Unavailable)) or tries >= DIRECT_TRIES:
                    log.info("frames of %s to %s go through the relay: %s", self.h.vnode_id, consumer, exc)
                    self.paths[consumer] = (pinned, "relay")
                    return False
                await asyncio.sleep(min(DIRECT_RETRY_S, 0.05 * 2**tries))
                continue
            self.paths[consumer] = (placement, "direct")
            return True

    async def deliver(self, frame: tpb.ActivationFrame | LocalFrame) -> bool:
        """Take a frame from a producer on this node (waiting for room); False once this hosting ended."""
        if self.finished.is_set():
            return False
        put = asyncio.ensure_future(self.inbox.put(frame))
        ended = asyncio.ensure_future(self.finished.wait())
        try:
            done, _ = await asyncio.wait({put, ended}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the sender gave up: the frame must not land later
            put.cancel()
            ended.cancel()
            raise
        ended.cancel()
        if put in done:
            return True
        put.cancel()
        return False

    async def _report(self, *, checkpoint: bool = False, done: bool = False, **check: Any) -> None:
        """Report progress now, with a checkpoint of the state now when asked."""
        rt = self.rt
        assert rt is not None
        await self._send(self._progress(done=done, **check), rt.state_bytes() if checkpoint else None)

    def _progress(self, *, done: bool = False, **check: Any) -> tpb.VNodeReport:
        """This VNode's progress as of now (the step, the batch, the loss, the rate)."""
        rt = self.rt
        assert rt is not None
        h = self.h
        now = time.monotonic()
        t0, n0 = self.window
        rate = (self.samples - n0) / (now - t0) if now > t0 else 0.0
        self.window = (now, self.samples)
        return tpb.VNodeReport(
            node_id=self.host.node_id,
            network_id=h.network_id,
            vnode_id=h.vnode_id,
            generation=h.generation,
            step=rt.step,
            last_batch=rt.last_batch,
            loss=self.loss,
            samples_per_s=rate,
            samples=self.samples,
            done=done,
            frames_direct=self.sent["direct"],
            frames_relayed=self.sent["relayed"],
            frames_local=self.sent["local"],
            **check,
        )

    async def _send(self, report: tpb.VNodeReport, state: bytes | None) -> None:
        """Upload the checkpoint (if any), then the report; a stop order ends this hosting."""
        now = time.monotonic()
        if state is not None:
            report.checkpoint_sha256 = await self.host.upload(state)
        ack = await self.host._stub().ReportVNode(report, timeout=60)
        self.last_report = now
        if ack.stop:
            raise _Stale()


class FrameHandler:
    """The ``train`` service of a node's data plane: frames from VNodes hosted on other nodes.

    A frame is taken only for a VNode hosted here in the generation the sender
    names, and only from the node the coordinator placed that input's producer
    on — the TLS session proves the sender — so no other pool node can feed a
    VNode batches. Anything else is refused and the sender uses the relay.
    """

    def __init__(self, host: VNodeHost) -> None:
        self.host = host

    def open(self, peer_node_id: str) -> _FrameConversation:
        """A conversation with the node ``peer_node_id`` (proved by its certificate)."""
        return _FrameConversation(self.host, peer_node_id)


class _FrameConversation:
    def __init__(self, host: VNodeHost, peer: str) -> None:
        self.host = host
        self.peer = peer

    async def handle(self, frame: dp.Frame) -> dp.Frame:
        """Put one activation frame into the consumer's inbox (waiting for room: back-pressure)."""
        if frame.op != "activation":
            raise InvalidInput(f"the train service has no operation {frame.op!r}", field="op")
        if len(frame.tensors) != 1:
            raise InvalidInput("an activation frame carries one tensor blob", field="tensors")
        network_id, vnode_id, src = (frame.strings.get(k, "") for k in ("network_id", "vnode_id", "from"))
        key = (network_id, vnode_id)
        worker = self.host.hosted.get(key)
        generation = frame.ints.get("generation", -1)
        if worker is None or worker.h.generation != generation:
            raise NotFound(f"VNode {vnode_id} of {network_id} is not hosted here in generation {generation}")
        if not any(
            not r.consumer and r.vnode_id == src and r.node_id == self.peer for r in self.host.routes[key]
        ):
            raise PermissionDenied(f"node {self.peer} does not host {src!r}, an input of {vnode_id}")
        delivered = tpb.ActivationFrame(
            vnode_id=src, seq=frame.ints.get("seq", -1), tensor=frame.tensors[0].data
        )
        if not await worker.deliver(delivered):
            raise Conflict(f"VNode {vnode_id} of {network_id} stopped here")
        return dp.Frame()

    async def close(self) -> None:
        """Nothing is kept per conversation."""
