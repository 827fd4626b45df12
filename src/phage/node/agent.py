"""The node's main loop: enroll once, then heartbeat, pull work, run it, report.

The node dials out and never listens. Every RPC that fails because the
coordinator is away is retried with backoff, and a finished result is kept
until the coordinator acknowledges it, so a coordinator restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil

from phage import __version__
from phage.dataplane import TLSIdentity
from phage.domain import ReceivedAssignment, TaskResult
from phage.domain.blocks import BlockOffer
from phage.errors import PhageError, SandboxError
from phage.logs import REQUEST_ID
from phage.node import faults
from phage.node.attest import attest_result
from phage.node.blobs import BlobTransfers
from phage.node.blocks import BlockServer
from phage.node.chat import ChatServer
from phage.node.config import NodeConfig
from phage.node.connection import (
    Credentials,
    enroll,
    load_credentials,
    open_channel,
    save_credentials,
    secure_key_dir,
)
from phage.node.endpoints import Backoff, Endpoints, fetch_backoff, heartbeat_backoff, retry_rpc
from phage.node.engines import Engine, make_engine
from phage.node.executor import CollectedOutput, JobExecutor
from phage.node.faults import poison_updates_enabled
from phage.node.listener import NodeListener
from phage.node.probe import probe_hardware, probe_metrics
from phage.node.results import ResultSender
from phage.node.window import ClaimWindow
from phage.node.workspaces import WorkspaceCache
from phage.pki.attestation import sandbox_hash
from phage.pki.identity import NodeIdentity
from phage.protocol import convert
from phage.protocol.channels import channel_closed_under
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.sandbox import Sandbox, SandboxLimits, available_backends, make_sandbox
from phage.sandbox.registry import DEFAULT_FIRST
from phage.sandbox.scratch import ScratchVolumes
from phage.sandbox.warm import WarmPool
from phage.sandbox.warm import unavailable_reason as warm_unavailable

log = logging.getLogger("phage.node")

FAILOVER_AFTER = 2
"""Consecutive heartbeats a replica may miss before the node moves to the next one."""


@dataclass
class Running:
    """An assignment this node holds."""

    assignment: ReceivedAssignment
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    in_slot_since: float | None = None
    """When it took a slot (None: waiting for one, or a task that takes none)."""
    reporting: bool = False
    """Finished executing; its result is on the way. It no longer holds a slot, but is still
    listed in heartbeats so its lease lives until the coordinator has the result."""


async def _await_call(call: Any) -> pb.FetchTaskResponse:
    response: pb.FetchTaskResponse = await call
    return response


def _pick_sandboxes(given: Sandbox | None, name: str | None) -> dict[str, Sandbox]:
    """The backend the operator named (or was handed), else every isolating one that works here."""
    if given is not None:
        return {given.name: given}
    if name is not None:
        chosen = make_sandbox(name)
        return {chosen.name: chosen}
    found: dict[str, Sandbox] = {}
    for backend, reason in available_backends().items():
        if backend in DEFAULT_FIRST and reason is None:
            found[backend] = make_sandbox(backend)
    if not found:
        make_sandbox(None)  # raises, saying why and what to do
    return dict(sorted(found.items(), key=lambda kv: DEFAULT_FIRST.index(kv[0])))


def _scratch_volumes(sandboxes: dict[str, Sandbox], polled_ok: bool) -> ScratchVolumes | None:
    """Per-workspace volumes for isolating backends; refuse to start without them unless told."""
    if set(sandboxes) <= {"none"}:
        return None  # unisolated by the operator's choice: nothing to enforce
    found = ScratchVolumes.detect()
    if isinstance(found, ScratchVolumes):
        return found
    if polled_ok:
        log.warning("scratch caps are only polled on this node (%s): a job can overshoot them", found)
        return None
    raise SandboxError(
        f"the kernel cannot enforce scratch caps here: {found}; pass --polled-scratch to accept "
        "a cap the node only polls (a job can then overshoot it by preallocating disk)",
        field="polled_scratch",
    )


def _warm_pool(
    sandboxes: dict[str, Sandbox], config: NodeConfig, volumes: ScratchVolumes | None
) -> WarmPool | None:
    """Warm bwrap sandboxes where bwrap runs here and the operator did not turn them off."""
    size = config.max_concurrency if config.warm_sandboxes is None else config.warm_sandboxes
    if "bwrap" not in sandboxes or size == 0:
        return None
    reason = warm_unavailable()
    if reason is not None:
        log.info("every bwrap run starts a fresh sandbox here: %s", reason)
        return None
    return WarmPool(config.scratch_root, volumes, size=size)


class NodeAgent:
    """One node: ``await NodeAgent(config).run()``; ``stop()`` ends it."""

    def __init__(
        self, config: NodeConfig, *, sandbox: Sandbox | None = None, engine: Engine | None = None
    ) -> None:
        self.config = config
        self.sandboxes = _pick_sandboxes(sandbox, config.sandbox)
        """Every backend this node offers, default first (``DEFAULT_FIRST``); the first runs tasks
        that ask for ``any``, the others only tasks that require them."""
        self.sandbox = next(iter(self.sandboxes.values()))
        self._sandbox_sha256 = {name: sandbox_hash(sb.describe()) for name, sb in self.sandboxes.items()}
        self.engine = engine
        self.chat: ChatServer | None = None
        self.blocks: BlockServer | None = None
        self.listener: NodeListener | None = None
        """Where other nodes reach this one: sharded models' stages, training's activation frames."""
        if config.serve_blocks or (config.host_vnodes and not config.dataplane_relay):
            self.listener = NodeListener(
                host=config.dataplane_host,
                port=config.dataplane_port,
                advertise=config.dataplane_advertise,
                relay=config.dataplane_relay,
            )
        if config.serve_blocks:
            assert self.listener is not None
            memory = config.block_memory_bytes or config.model_memory_bytes
            self.blocks = BlockServer(
                config.serve_blocks,
                memory or int(psutil.virtual_memory().available),
                self.listener,
                requested_model=config.sharded_model,
            )
        self._loading: asyncio.Task[None] | None = None
        if self.engine is None and config.engine:
            self.engine = make_engine(
                config.engine, config.model or "", model_name=config.model_name, **config.engine_options()
            )
        secure_key_dir(config.key_dir)
        self.endpoints = Endpoints(config.coordinator, config.enroll)
        """The coordinator replicas; the node talks to ``endpoints.current`` and moves on when it dies."""
        self._creds: Credentials | None = None
        self.identity = NodeIdentity.load_or_create(config.key_dir)
        if self.blocks is not None:
            self.blocks.handler.node_id = self.identity.node_id  # a one-node ring pushes to itself
        volumes = _scratch_volumes(self.sandboxes, config.polled_scratch)
        self.warm = _warm_pool(self.sandboxes, config, volumes)
        """Warm bwrap sandboxes, reused after a scrub (``phage.sandbox.warm``); None: all cold."""
        self.executor = JobExecutor(config.scratch_root, config.max_log_bytes, volumes, self.warm)
        self.workspaces = WorkspaceCache(config.key_dir / "workspaces")
        """Streamed workspace archives kept by digest, so tasks sharing one download it once."""
        self.blobs = BlobTransfers(lambda: self.stub, self.workspaces)
        self._corrupt_outputs = faults.corrupt_outputs_enabled()
        """Fault injection for tests and benchmarks (node/faults.py): report wrong job outputs."""
        self.running: dict[str, Running] = {}
        self.completed = 0
        self._slots = asyncio.Semaphore(config.max_concurrency)
        """The cap on real work: jobs and generate tasks run at most this many at once."""
        self.window = ClaimWindow(config.max_concurrency)
        """How many assignments to hold at once: the slots plus a short look-ahead (node/window.py)."""
        self._confirming: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.PhageCoordinatorStub | None = None
        self.heartbeat_interval = config.heartbeat_interval_s or 10.0
        self.registered = asyncio.Event()
        self.results = ResultSender(self.identity, self._submit)

    def _sandbox_for(self, isolation: str) -> Sandbox | None:
        """The backend for a task's required isolation; None when this node cannot give it."""
        if isolation in ("", "any"):
            return self.sandbox
        return self.sandboxes.get(isolation)

    @property
    def executing(self) -> int:
        """Assignments held and not finished (running or waiting for a slot, not yet reporting)."""
        return sum(1 for r in self.running.values() if not r.reporting)

    def _done_executing(self, assignment_id: str) -> None:
        r = self.running.get(assignment_id)
        if r is not None and not r.reporting:
            r.reporting = True
            self._slot_freed.set()

    @property
    def node_id(self) -> str:
        """This node's id (base64 Ed25519 public key)."""
        return self.identity.node_id

    def info(self) -> dict[str, Any]:
        """What Register tells the coordinator about this node."""
        hw = probe_hardware()
        return {
            **hw,
            "name": self.config.name or hw["hostname"],
            "sandboxes": list(self.sandboxes),
            "engines": [self.engine.name] if self.engine else [],
            **self._engine_facts(hw),
            "max_concurrency": self.config.max_concurrency,
            "phage_version": __version__,
        }

    def _engine_facts(self, hw: dict[str, Any]) -> dict[str, Any]:
        """What placement needs: the models served, memory a model may use, the loaded model's size."""
        if self.engine is None:
            return {"loaded_model": "", "models": [], "model_memory_bytes": 0, "loaded_model_bytes": 0}
        loaded = self.engine.memory_bytes() or 0
        cap = self.config.model_memory_bytes
        if cap is None:
            gpus = hw.get("gpus") or []
            share = getattr(self.engine, "gpu_memory_utilization", None)
            if gpus and self.engine.can_load and not loaded:
                # A server we run (vLLM) reserves its share of the card whatever model it holds:
                # that share is what a model may use, not the VRAM left free beside it.
                cap = int(sum(int(g["vram_total_bytes"]) for g in gpus) * (share or 0.9))
            elif gpus:  # free VRAM, counting what the loaded model would give back on a switch
                free = sum(int(g["vram_total_bytes"]) - int(g["vram_used_bytes"]) for g in gpus)
                cap = free + loaded
            else:
                cap = int(psutil.virtual_memory().available) + loaded
        return {
            "loaded_model": self.engine.model,
            "models": self.engine.models(),
            "model_memory_bytes": cap,
            "loaded_model_bytes": loaded,
            "can_load_models": self.engine.can_load,
        }

    def stop(self) -> None:
        """Ask the node to stop; running work is abandoned (the coordinator requeues it)."""
        self._stop.set()

    # ---- connection --------------------------------------------------------

    async def _connect(self) -> None:
        cfg = self.config
        creds = load_credentials(cfg.key_dir, cfg.ca_fingerprint)
        if creds is None:
            creds = await self._first_enroll()
        else:
            # Re-register with the saved identity so the coordinator has fresh hardware facts;
            # tolerate a coordinator that is down (the saved certificate still works later).
            with contextlib.suppress(PhageError, grpc.aio.AioRpcError, OSError):
                if cfg.ca_fingerprint:
                    creds = await self._enroll()
        await self._open(creds)

    async def _first_enroll(self) -> Credentials:
        """Enroll through the first replica that answers (each is tried once, with backoff between)."""
        backoff = Backoff()
        for attempt in range(len(self.endpoints.all)):
            try:
                return await self._enroll()
            except (grpc.aio.AioRpcError, OSError) as exc:
                if attempt == len(self.endpoints.all) - 1:
                    raise
                log.warning(
                    "enrollment at %s failed (%s); trying the next coordinator",
                    self.endpoints.current.enroll,
                    exc,
                )
                self.endpoints.advance()
                await backoff.wait()
        raise AssertionError("unreachable")

    async def _enroll(self) -> Credentials:
        cfg = self.config
        if not cfg.ca_fingerprint:
            # the token may be left out: open and allowlist pools admit without one
            raise PhageError(
                "this node has no certificate yet: give --ca-fingerprint (and the join token, which most "
                "pools need: PHAGE_JOIN_TOKEN or --token-file)"
            )
        creds = await enroll(
            self.identity,
            enroll_address=self.endpoints.current.enroll,
            join_token=cfg.join_token or "",
            ca_fingerprint=cfg.ca_fingerprint,
            info=self.info(),
        )
        save_credentials(cfg.key_dir, creds)
        log.info("registered as %s", self.node_id)
        return creds

    async def _open(self, creds: Credentials) -> None:
        """Point every loop at a new channel, then close the old one.

        In that order: closing first lets other tasks run while the close is awaited, and a
        call they start on the old stub then fails with "Channel is closed" (a UsageError, not
        an RPC error) — which once killed the result sender after a move to another replica,
        leaving every later result unsent while heartbeats kept their leases alive. Calls
        still open on the old channel end with CancelledError in the tasks awaiting them;
        every loop tells that from its own cancellation (``channel_closed_under``) and retries.
        """
        old = self._channel
        self._creds = creds
        here = self.endpoints.current
        self._channel = open_channel(here.target, self.identity, creds, tls_name=here.tls_name)
        self._stub = pb_grpc.PhageCoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self.registered.set()
        if old is not None:
            await old.close(None)

    def _current_channel(self) -> grpc.aio.Channel:
        """The channel to the coordinator now (it changes when the node reconnects)."""
        assert self._channel is not None
        return self._channel

    @property
    def stub(self) -> pb_grpc.PhageCoordinatorStub:
        """The coordinator stub (after connect)."""
        assert self._stub is not None
        return self._stub

    # ---- main loop ---------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped."""
        if self.engine is not None:
            await self.engine.start()
        await self._connect()
        loops = [
            asyncio.create_task(self._heartbeat_loop(), name="phage-node-heartbeat"),
            asyncio.create_task(self._fetch_loop(), name="phage-node-fetch"),
            asyncio.create_task(self.results.run(), name="phage-node-results"),
        ]
        if self.listener is not None:
            await self.listener.start(self._tls_identity(), self._current_channel)
        if self.engine is not None:
            self.chat = ChatServer(self.node_id, lambda: self.stub, self.engine, faults.chat_fault())
            loops.append(asyncio.create_task(self.chat.run(), name="phage-node-chat"))
        if self.config.host_vnodes:
            loops.append(asyncio.create_task(self._host_vnodes(), name="phage-node-training"))
        if self.warm is not None:  # one sandbox ready for the first task; more as tasks come
            prewarm = self.warm.prewarm(SandboxLimits(), 1)
            loops.append(asyncio.create_task(prewarm, name="phage-node-prewarm"))
        try:
            await self._stop.wait()
        finally:
            tasks = [*loops, *self._confirming, *(r.task for r in self.running.values() if r.task)]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.warm is not None:
                await self.warm.close()
            if self.blocks is not None:
                await self._leave_blocks()
                await self.blocks.stop()
            if self.listener is not None:
                await self.listener.stop()
            if self._channel is not None:
                await self._channel.close(None)
            if self.engine is not None:  # stop a managed vLLM / llama.cpp server with the node
                with contextlib.suppress(Exception):
                    await self.engine.close()

    async def _failover(self) -> None:
        """The replica in use stopped answering: move to the next one, keeping identity and work.

        The running assignments stay as they are; the next heartbeat lists them to the new
        replica, which shares the database and so knows them. A replica that has not seen this
        node yet refuses it once, and the node re-enrolls there with the same identity.
        """
        if len(self.endpoints.all) < 2 or self._creds is None:
            return
        gone = self.endpoints.current
        here = self.endpoints.advance()
        log.warning("coordinator %s is not answering; moving to %s", gone.target, here.target)
        await self._open(self._creds)

    async def _host_vnodes(self) -> None:
        """Host VNodes of composable networks when this node has torch (the ``training`` extra)."""
        try:
            # importing torch takes seconds of CPU: off the event loop, or heartbeats and chats stall
            training = await asyncio.to_thread(importlib.import_module, "phage.node.training")
        except ImportError:
            log.info("not hosting VNodes: torch, numpy or safetensors is missing (install phage[training])")
            return
        direct = self.listener.direct if self.listener is not None else ""
        host = training.VNodeHost(
            self.node_id,
            self._current_channel,
            self.config.key_dir / "training-cache",
            poison_updates=poison_updates_enabled(),
            identity=self._tls_identity(),
            address=direct,
        )
        if direct and self.listener is not None:
            self.listener.handlers["train"] = host.frames  # activation frames from other nodes' VNodes
        await host.run()

    def _tls_identity(self) -> TLSIdentity:
        """This node's data-plane identity: its pool certificate (issued at Register)."""
        assert self._creds is not None
        return TLSIdentity(
            self.node_id, self.identity.tls_key_pem(), self._creds.cert_pem, self._creds.ca_pem
        )

    async def _heartbeat_loop(self) -> None:
        backoff = heartbeat_backoff(self.heartbeat_interval)
        missed = 0
        while True:
            try:
                metrics = probe_metrics()
                metrics["active_tasks"] = len(self.running) + len(self.chat.active if self.chat else ())
                metrics.update(self._engine_facts(metrics))
                metrics.pop("can_load_models", None)
                request = pb.HeartbeatRequest(
                    node_id=self.node_id,
                    metrics=convert.metrics_from_dict(metrics),
                    running_assignment_ids=list(self.running),
                )
                if self.blocks is not None:
                    request.blocks.CopyFrom(convert.block_offer_to_pb(self.blocks.offer()))
                resp = await self.stub.Heartbeat(request, timeout=max(2.0, self.heartbeat_interval))
                if self.blocks is not None and resp.HasField("blocks"):
                    self.blocks.apply(convert.block_assignment_from_pb(resp.blocks))
                backoff.reset()
                missed = 0
                if not self.config.heartbeat_interval_s and resp.heartbeat_interval_s > 0:
                    self.heartbeat_interval = resp.heartbeat_interval_s
                self._cancel(list(resp.cancel_assignment_ids) + list(resp.unknown_assignment_ids))
                if resp.load_model:
                    self._load_model(resp.load_model)
                await asyncio.sleep(self.heartbeat_interval)
            except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
                if not channel_closed_under(exc):
                    raise
                log.debug("heartbeat on a closed channel; the node moved")
                await backoff.wait()
            except grpc.aio.AioRpcError as exc:
                log.debug("heartbeat failed: %s", exc.code())
                await self._handle_rpc_error(exc)
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    missed += 1
                    if missed >= FAILOVER_AFTER:
                        missed = 0
                        await self._failover()
                await backoff.wait()

    async def _leave_blocks(self) -> None:
        """Tell the coordinator this node's blocks are going, so a standby takes them at once."""
        request = pb.HeartbeatRequest(node_id=self.node_id)
        request.blocks.CopyFrom(convert.block_offer_to_pb(BlockOffer(serve_blocks="")))
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError, AssertionError):
            await self.stub.Heartbeat(request, timeout=2)

    def _load_model(self, model: str) -> None:
        """Switch the engine to ``model`` in the background (the coordinator asked: queued work needs it)."""
        engine = self.engine
        if engine is None or not engine.can_load or model == engine.model:
            return
        if self._loading is not None and not self._loading.done():
            return

        async def load() -> None:
            log.info("loading model %s (asked by the coordinator)", model)
            try:
                await engine.load(model)
            except PhageError as exc:
                log.warning("could not load %s: %s", model, exc.message)

        self._loading = asyncio.create_task(load(), name="phage-node-load-model")

    async def _handle_rpc_error(self, exc: grpc.aio.AioRpcError) -> None:
        """Re-enroll when the coordinator no longer knows our certificate."""
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            log.warning("coordinator refused this node: %s", exc.details())
            with contextlib.suppress(PhageError, grpc.aio.AioRpcError, OSError):
                await self._open(await self._enroll())

    async def _fetch_loop(self) -> None:
        backoff = fetch_backoff()
        while True:
            try:
                resp = await self._fetch_once()
                backoff.reset()
            except grpc.aio.AioRpcError as exc:
                log.debug("fetch failed: %s %s", exc.code(), exc.details())
                await self._handle_rpc_error(exc)
                await backoff.wait()
                continue
            except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
                if not channel_closed_under(exc):
                    raise
                await backoff.wait()  # the node moved to another replica: poll there
                continue
            except Exception:  # never let the work loop die silently
                log.exception("fetch loop error")
                await backoff.wait()
                continue
            if resp is None:
                continue
            self._cancel(list(resp.cancel_assignment_ids))
            if resp.assignments:
                await self._begin([convert.assignment_from_pb(a) for a in resp.assignments])

    async def _fetch_once(self) -> pb.FetchTaskResponse | None:
        """One long-poll; None when it was cut short because a local slot opened."""
        now = time.monotonic()
        in_slots = [r.in_slot_since for r in self.running.values() if r.in_slot_since and not r.reporting]
        free = self.window.size(running_for=now - min(in_slots, default=now)) - self.executing
        self._slot_freed.clear()
        request = pb.FetchTaskRequest(
            node_id=self.node_id, max_tasks=max(free, 0), wait_ms=self.config.fetch_wait_ms
        )
        call = self.stub.FetchTask(request, timeout=self.config.fetch_wait_ms / 1000 + 10)
        if free > 0:
            response: pb.FetchTaskResponse = await call
            return response
        # Full: the poll only carries cancellations. Re-poll as soon as a slot frees.
        fetched = asyncio.ensure_future(_await_call(call))
        freed = asyncio.ensure_future(self._slot_freed.wait())
        try:
            done, _ = await asyncio.wait({fetched, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            freed.cancel()
        if fetched in done:
            return fetched.result()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await fetched
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # the node is stopping: not the poll we cut
            raise asyncio.CancelledError
        return None

    async def _begin(self, assignments: list[ReceivedAssignment]) -> None:
        """Start the assignments at once and tell the coordinator in the background.

        Each run overlaps the StartTasks round trip; its result waits for the answer
        (so the coordinator hears "started" before "finished"), and one the coordinator
        no longer wants is cancelled, killing its sandbox.
        """
        answer: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        for a in assignments:
            r = self.running[a.assignment_id] = Running(a)
            r.task = asyncio.create_task(self._execute(a, answer), name=f"phage-task-{a.assignment_id}")
        confirm = asyncio.create_task(self._confirm([a.assignment_id for a in assignments], answer))
        self._confirming.add(confirm)
        confirm.add_done_callback(self._confirming.discard)

    async def _confirm(self, ids: list[str], answer: asyncio.Future[set[str]]) -> None:
        unwanted: set[str] = set()
        try:
            resp = await retry_rpc(
                lambda: self.stub.StartTasks(
                    pb.StartTasksRequest(node_id=self.node_id, assignment_ids=ids), timeout=10
                )
            )
            unwanted = set(resp.cancel_assignment_ids)
        except grpc.aio.AioRpcError:
            pass  # refused outright: run them anyway; the result's own checks decide
        finally:
            self._cancel([aid for aid in ids if aid in unwanted])
            if not answer.done():
                answer.set_result(unwanted)

    def _cancel(self, assignment_ids: list[str]) -> None:
        for aid in assignment_ids:
            r = self.running.pop(aid, None)
            if r is not None and r.task is not None:
                log.info("stopping %s (cancelled)", aid)
                r.task.cancel()  # its own cleanup removes the workspace
                self._slot_freed.set()

    # ---- one assignment ----------------------------------------------------

    async def _execute(self, a: ReceivedAssignment, started: asyncio.Future[set[str]]) -> None:
        # every record made while running it carries the id of the request that submitted it
        REQUEST_ID.set(a.spec.request_id or None)
        log.info(
            "running %s task %s", a.kind, a.task_id, extra={"task_id": a.task_id, "attempt": a.assignment_id}
        )
        outputs: list[CollectedOutput] = []
        claimed = began = time.monotonic()
        try:
            if a.problem:
                result = TaskResult(exit_code=-1, error=f"node error: {a.problem}")
            elif a.kind == "noop":
                result = TaskResult(exit_code=0)
                self.window.record(0.0)
            else:
                async with self._slots:  # the per-node cap on real work; held tasks wait here
                    began = time.monotonic()
                    if (held := self.running.get(a.assignment_id)) is not None:
                        held.in_slot_since = began
                    result, outputs = await self._run(a)
                    self.window.record(time.monotonic() - began)
            self._done_executing(a.assignment_id)
            ran = time.monotonic()
            await started  # StartTasks answered (a task it refused was cancelled, not reported)
            await asyncio.gather(*(self.blobs.upload(out) for out in outputs))  # side by side, not in turn
            uploaded = time.monotonic()
            await self._report(a, result)
            if log.isEnabledFor(logging.DEBUG):  # the per-task trace BENCHMARKS.md breaks down
                log.debug(
                    "%s: waited for a slot %.1f ms, ran %.1f ms (job %.1f), upload %.1f ms, report %.1f ms",
                    a.assignment_id,
                    (began - claimed) * 1000,
                    (ran - began) * 1000,
                    result.wall_time_s * 1000,
                    (uploaded - ran) * 1000,
                    (time.monotonic() - uploaded) * 1000,
                )
        except (asyncio.CancelledError, Exception) as exc:
            if isinstance(exc, asyncio.CancelledError) and not channel_closed_under(exc):
                raise
            # report node-side failures (a call cut by a move to another replica among them)
            # so the task is retried elsewhere
            log.exception("assignment %s failed on this node", a.assignment_id)
            with contextlib.suppress(Exception):
                await started
                await self._report(a, TaskResult(exit_code=-1, error=f"node error: {exc!r}"))
        finally:
            if a.kind != "noop":  # unmounting a scratch volume takes tens of ms: off the event loop
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(asyncio.to_thread(self.executor.cleanup, a.assignment_id))
            if self.running.pop(a.assignment_id, None) is not None:
                self.completed += 1
            self._slot_freed.set()

    async def _run(self, a: ReceivedAssignment) -> tuple[TaskResult, list[CollectedOutput]]:
        if a.kind == "job":
            return await self._run_job(a)
        if a.kind == "generate":
            return await self._run_generate(a)
        return TaskResult(exit_code=-1, error=f"this node does not know task kind {a.kind!r}"), []

    async def _run_job(self, a: ReceivedAssignment) -> tuple[TaskResult, list[CollectedOutput]]:
        manifest = a.spec.manifest
        if manifest is None:
            return TaskResult(exit_code=-1, error="node error: the job came without a manifest"), []
        sandbox = self._sandbox_for(a.spec.isolation)
        if sandbox is None:
            return TaskResult(
                exit_code=-1,
                error=f"task requires isolation {a.spec.isolation!r}; "
                f"this node provides {', '.join(self.sandboxes)}",
            ), []
        workspace = await self._workspace(a)
        result, outputs = await self.executor.run(
            sandbox, a.assignment_id, manifest, workspace, a.max_output_bytes
        )
        if self._corrupt_outputs and not result.error:
            outputs = await asyncio.to_thread(faults.corrupt, result, outputs)
        return result, outputs

    async def _run_generate(self, a: ReceivedAssignment) -> tuple[TaskResult, list[CollectedOutput]]:
        if self.engine is None:
            return TaskResult(exit_code=-1, error="this node runs no inference engine"), []
        gen = a.spec.generate
        if gen is None:
            return TaskResult(exit_code=-1, error="node error: the generate task came without its spec"), []
        sandbox = self._sandbox_for(a.spec.isolation)
        if sandbox is None:
            return TaskResult(exit_code=-1, error=f"task requires isolation {a.spec.isolation!r}"), []
        if gen.model not in self.engine.models():
            return TaskResult(
                exit_code=-1, error=f"this node serves {self.engine.model!r}, not {gen.model!r}"
            ), []
        workspace = await self._workspace(a)
        return await self.executor.run_generate(
            sandbox, a.assignment_id, gen, workspace, self.engine, a.max_output_bytes
        )

    async def _workspace(self, a: ReceivedAssignment) -> bytes | None:
        """The assignment's workspace: sent inline when small, else downloaded."""
        if a.spec.workspace and not a.workspace:
            return await self.blobs.download(a.spec.workspace)
        return a.workspace

    async def _report(self, a: ReceivedAssignment, result: TaskResult) -> None:
        """Queue a result for the sender and wait for the coordinator's acknowledgement."""
        sandbox = self._sandbox_for(a.spec.isolation) or self.sandbox
        record = attest_result(a, result, sandbox.name, self._sandbox_sha256[sandbox.name])
        msg = convert.result_to_pb(self.node_id, a.assignment_id, a.task_id, result)
        ack = await self.results.report(msg, record)
        if not ack.accepted:
            log.info("result for %s not accepted: %s", a.assignment_id, ack.message)

    def _submit(self, request: pb.ResultBatch) -> Any:
        """One SubmitResults call on the channel in use now."""
        return self.stub.SubmitResults(request, timeout=30)
