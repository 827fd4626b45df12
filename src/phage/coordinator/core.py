"""The coordinator's composition root: it builds the use-case services and runs their loops.

Every service gets the few collaborators it uses, built here in dependency order, and none
holds the coordinator itself:

- :class:`~phage.coordinator.ledger.TaskLedger` — the shared moves on tasks: queue, cancel,
  lose, requeue (store first, then memory, then the feed);
- :class:`~phage.coordinator.intake.Intake` — submissions become tasks;
- :class:`~phage.coordinator.admission.Admission`, :class:`~phage.coordinator.nodes.NodeRegistry`
  and :class:`~phage.coordinator.liveness.Liveness` — who is in the pool and alive;
- :class:`~phage.coordinator.dispatch.Dispatcher` — the long-poll fetch and claims;
- :class:`~phage.coordinator.results.ResultPipeline` — how a result settles its task.

The HTTP routers and the gRPC servicer are thin edges that call one service method each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from phage.coordinator.admission import Admission
from phage.coordinator.chat import ChatRouter
from phage.coordinator.chat_check import ChatChecker, CheckPolicy
from phage.coordinator.counters import Counters
from phage.coordinator.dispatch import Dispatcher, open_attempt
from phage.coordinator.feed import EventBus
from phage.coordinator.heap import HeapKeeper
from phage.coordinator.intake import Intake
from phage.coordinator.keys import ApiKeys
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.liveness import Liveness
from phage.coordinator.metering import Meter, RateDefaults
from phage.coordinator.nodes import NodeRegistry
from phage.coordinator.overview import PoolOverview
from phage.coordinator.placement import ModelPlacement
from phage.coordinator.pool import LiveNode, LivePool
from phage.coordinator.quotas import SubmitQuotas, UserLimits
from phage.coordinator.replicas import ReplicaLink
from phage.coordinator.replication import Replication
from phage.coordinator.results import ResultPipeline
from phage.coordinator.retention import Collector
from phage.coordinator.settings import CoordinatorSettings
from phage.coordinator.sharded import ShardedModels, UsageLog
from phage.coordinator.sharded_chat import ShardedChat, coordinator_identity
from phage.coordinator.sharded_tasks import ShardedTasks
from phage.coordinator.state import DataDir
from phage.coordinator.training import TrainingService
from phage.coordinator.training_types import HostFacts
from phage.coordinator.tried import TriedNodes
from phage.coordinator.trust import TrustGuard
from phage.coordinator.workloads import FILE_NAME as WORKLOADS_FILE
from phage.coordinator.workloads import ApprovedWorkloads
from phage.dataplane.relay import RelayHub
from phage.domain import NodeState
from phage.domain.quorum import QuorumPolicy
from phage.errors import SandboxError, StoreUnavailable
from phage.pki import CertificateAuthority
from phage.sandbox import make_sandbox
from phage.scheduler import ReadyQueue
from phage.store import SqlStore
from phage.store.blobs import BlobStore
from phage.store.signals import LocalSignals, PostgresSignals, Signals
from phage.store.sql_replicas import Sweep

log = logging.getLogger("phage.coordinator")

MONITOR_PERIOD_S = 0.25
FLUSH_PERIOD_S = 1.0


class Coordinator:
    """The pool's brain, assembled: durable queue, live nodes, placement, results."""

    def __init__(self, settings: CoordinatorSettings, *, clock: Callable[[], float] = time.time) -> None:
        s = self.settings = settings
        self.clock = clock
        self.dirs = DataDir(s.data_dir)
        # state
        self.store = SqlStore(s.db_url, synchronous=s.sqlite_synchronous)
        self.blobs = BlobStore(self.dirs.blobs)
        self.bus = EventBus()
        self.pool = LivePool()
        self.queue = ReadyQueue()
        self.counters = Counters()
        self.tried = TriedNodes()
        self.chat = ChatRouter()
        replicated = not self.store.is_sqlite
        signals: Signals = PostgresSignals(self.store.dsn) if replicated else LocalSignals()
        self.keys = ApiKeys(self.store, signals)
        self.meter = Meter(
            self.store,
            clock,
            RateDefaults(s.chat_requests_per_minute, s.chat_tokens_per_minute, s.chat_max_concurrent),
            s.chat_rate_window_s,
        )
        # policies (decide only)
        self.trust = TrustGuard(self.blobs, self.dirs.root / "verify", s.reverify_sample)
        policy = QuorumPolicy(s.min_quorum, s.reliable_after, s.spot_check)
        self.replication = Replication(policy, s.target_results, self.tried)
        self.placement = ModelPlacement(self.pool, self.queue, self.chat, clock)
        self.sharded = ShardedModels(
            self.dirs.root / "sharded-models.json",
            lease_s=s.lease_s,
            clock=clock,
            allowed=self._may_serve_blocks,
        )
        # use cases
        self.ledger = TaskLedger(
            self.store, self.queue, self.pool, self.bus, self.counters, self.tried, clock
        )
        self.workloads = ApprovedWorkloads(
            self.dirs.root / WORKLOADS_FILE, enforced=s.approved_workloads_only
        )
        quotas = SubmitQuotas(
            UserLimits(
                s.user_max_priority, s.user_max_attempts, s.user_max_tasks_per_request, s.user_max_open_tasks
            ),
            self.store.count_open_tasks,
        )
        self.intake = Intake(
            self.ledger,
            self.blobs,
            self.placement,
            self.replication,
            quotas,
            self.workloads,
            clock,
            self.meter.hold_tasks,
            sharded=self.sharded,
            can_verify=lambda: self.trust.verify_sandbox is not None,
        )
        self.collector = Collector(
            store=self.store,
            blobs=self.blobs,
            clock=clock,
            retention_s=s.task_retention_s,
            blob_grace_s=s.blob_grace_s,
        )
        self.admission = Admission(
            s.admission,
            s.workers_path,
            store=self.store,
            pool=self.pool,
            ledger=self.ledger,
            bus=self.bus,
            clock=clock,
        )
        self.nodes = NodeRegistry(
            self.store,
            self.pool,
            self.bus,
            self.ledger,
            self.admission,
            self.placement,
            lease_s=s.lease_s,
            clock=clock,
        )
        self.liveness = Liveness(
            self.store,
            self.pool,
            self.bus,
            self.ledger,
            self.chat,
            lease_s=s.lease_s,
            missed_heartbeats=s.missed_heartbeats,
            clock=clock,
            replicated=replicated,
        )
        self.dispatch = Dispatcher(
            self.store,
            self.queue,
            self.pool,
            self.blobs,
            self.bus,
            self.nodes,
            self.replication,
            self.tried,
            lease_s=s.lease_s,
            inline_workspace_bytes=s.inline_workspace_bytes,
            fetch_wait_ms_max=s.fetch_wait_ms_max,
            clock=clock,
        )
        self.results = ResultPipeline(
            self.store,
            self.pool,
            self.blobs,
            self.bus,
            self.nodes,
            self.ledger,
            self.trust,
            self.replication,
            self.tried,
            self.counters,
            clock,
            self.meter.charge_generation,
        )
        self.checker = ChatChecker(
            self.chat,
            self._chat_checkers,
            lambda node_id: (live := self.pool.nodes.get(node_id)) is not None and live.node.trusted,
            self.nodes.quarantine,
            self.store,
            CheckPolicy(s.chat_check_untrusted, s.chat_check_trusted),
        )
        self.nodes.on_arrival = self.dispatch.adopt if replicated else None
        self.replicas = ReplicaLink(
            signals=signals,
            store=self.store,
            queue=self.queue,
            bus=self.bus,
            keys=self.keys,
            wake=self.ledger.wake_for,
            nodes_changed=self.nodes.apply_rows,
            heard=self.nodes.apply_heartbeats,
            mirrors=lambda: any(not n.here for n in self.pool.nodes.values()),
            swept=self._swept,
            local_nodes=lambda: [n.node.id for n in self.pool.nodes.values() if n.here],
            lease_s=s.lease_s,
            clock=clock,
            replicated=replicated,
        )
        self.overview = PoolOverview(self.ledger, self.pool, self.queue, clock)
        self.training = TrainingService(
            store=self.store,
            blobs=self.blobs,
            facts=self._host_facts,
            quarantine=self.nodes.quarantine,
            lost_after_s=s.lease_s,
            clock=clock,
        )
        self.ca: CertificateAuthority | None = None
        self.join_token = ""
        self.admin_key = ""
        self.started_at = 0.0
        self.sharded_usage = UsageLog()
        self.relay = RelayHub()
        """Streams of nodes that serve their blocks through the coordinator (``--dataplane-relay``)."""
        self.sharded_chat: ShardedChat | None = None
        self.sharded_tasks: ShardedTasks | None = None
        self._loops: list[asyncio.Task[None]] = []

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open the store, load the CA and secrets, rebuild live state, start the loops."""
        self.dirs.prepare()
        self.ca = self.nodes.ca = CertificateAuthority.load_or_create(self.dirs.pki)
        self.join_token = self.admission.join_token = self.settings.join_token or self.dirs.join_token()
        self.sharded.load()
        self.sharded_chat = ShardedChat(
            self.sharded,
            coordinator_identity(self.ca, self.dirs.pki / "dataplane"),
            self.sharded_usage,
            check_rate=self.settings.sharded_check_rate,
            trusted=self._trusted,
            quarantine=self.nodes.quarantine,
            relay=self.relay,
        )
        self.sharded_tasks = ShardedTasks(
            driver_id=self.sharded_chat.identity.node_id,
            queue=self.queue,
            store=self.store,
            blobs=self.blobs,
            ledger=self.ledger,
            bus=self.bus,
            counters=self.counters,
            tried=self.tried,
            sharded=self.sharded,
            chat=self.sharded_chat,
            sandbox=lambda: self.trust.verify_sandbox,
            scratch=self.dirs.root / "verify",
            charge=self.meter.charge_generation,
            lease_s=self.settings.lease_s,
            poll_s=self.settings.heartbeat_interval_s,
            max_output_bytes=self.settings.max_output_bytes,
            clock=self.clock,
        )
        self.ledger.on_queued = self.sharded_tasks.wake.set
        try:
            # probing a backend runs it once (gVisor: about a second): keep the loop free meanwhile
            self.trust.verify_sandbox = await asyncio.to_thread(make_sandbox, self.settings.verify_sandbox)
        except SandboxError as exc:
            log.warning("re-verification disabled: %s", exc.message)
        await self.store.open()
        self.admin_key = await self.keys.ensure_admin(self.dirs.admin_key_file, self.clock())
        await self._recover()
        await self.admission.start()
        await self.replicas.start()
        await self.training.start()
        self.started_at = self.overview.started_at = self.clock()
        period = min(MONITOR_PERIOD_S, self.settings.heartbeat_interval_s / 4)
        self._loops = [
            asyncio.create_task(_every(period, self.liveness.check, "liveness check"), name="phage-liveness"),
            asyncio.create_task(
                _every(FLUSH_PERIOD_S, self.nodes.flush, "heartbeat flush"), name="phage-flush"
            ),
            asyncio.create_task(self.admission.watch(), name="phage-admission"),
            asyncio.create_task(_every(self.settings.gc_period_s, self._sweep, "gc sweep"), name="phage-gc"),
            asyncio.create_task(self.sharded_tasks.run(), name="phage-sharded-tasks"),
        ]
        if self.settings.heap_freeze_period_s > 0:
            heap = HeapKeeper(
                freeze_period_s=self.settings.heap_freeze_period_s,
                deep_period_s=self.settings.heap_deep_period_s,
            )
            heap.freeze()  # what recovery loaded is long-lived
            self._loops.append(asyncio.create_task(heap.run(), name="phage-heap"))

    async def _sweep(self) -> None:
        await self.collector.sweep()

    async def stop(self) -> None:
        """Stop the loops, write the last heartbeats and close the store."""
        await self.training.stop()
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.replicas.stop()
        HeapKeeper.release()
        with contextlib.suppress(Exception):
            await self.nodes.flush()
        await self.checker.drain()
        await self.meter.drain()
        await self.store.close()

    async def _recover(self) -> None:
        """Rebuild memory from the store; every node gets one lease of grace to reconnect."""
        now = self.clock()
        self.queue.extend(await self.store.queued_tasks())
        for node in await self.store.list_nodes():
            if node.state is NodeState.REMOVED:
                continue
            self.pool.nodes[node.id] = LiveNode(
                node=node,
                last_seen=now if node.state is NodeState.ONLINE else 0.0,
                here=not self.replicas.replicated,
            )
        # several replicas: a node's assignments are taken over when it talks to this one (adopt)
        for att in [] if self.replicas.replicated else await self.store.open_attempts():
            task = await self.store.get_task(att.task_id)
            if task is None:
                continue
            self.pool.add_attempt(open_attempt(att, task.kind.value, task.spec, now + self.settings.lease_s))
        multi = [t.id for t in self.queue.tasks() if t.spec.best_of > 1]
        self.tried.update(await self.store.nodes_tried(multi))
        quorum_jobs = [t.id for t in self.queue.tasks() if t.spec.quorum is not None]
        self.tried.update(await self.store.quorum_voters(quorum_jobs))
        log.info(
            "recovered %d queued tasks, %d open attempts, %d nodes",
            len(self.queue),
            len(self.pool.attempts),
            len(self.pool.nodes),
        )

    async def _swept(self, sweep: Sweep) -> None:
        """The leader's sweep buried nodes silent on every replica and leases nobody renewed."""
        for node_id in sweep.dead_nodes:
            live = self.pool.nodes.get(node_id)
            if live is not None:
                live.node.state = NodeState.DEAD
                self.chat.node_lost(node_id, "stopped sending heartbeats")
            self.bus.node(node_id, NodeState.DEAD.value)
        await self.ledger.lost(sweep.lost, "node silent on every coordinator, or its lease lapsed")

    # ---- queries the edges share --------------------------------------------

    def _host_facts(self, node_id: str) -> HostFacts | None:
        """What training placement needs of a node."""
        live = self.pool.nodes.get(node_id)
        if live is None:
            return None
        return HostFacts(node_id, live.node.trusted, live.accepts_work, live.online)

    def _trusted(self, node_id: str) -> bool:
        live = self.pool.nodes.get(node_id)
        return live is not None and live.node.trusted

    def _may_serve_blocks(self, node_id: str) -> bool:
        """Sharded-model blocks count only on online, admitted, unquarantined nodes."""
        live = self.pool.nodes.get(node_id)
        return live is not None and live.online and not live.node.quarantined and not live.node.state.shut_out

    def chat_nodes(self) -> list[LiveNode]:
        """Nodes that may take chat now: online, not quarantined, holding a chat order stream.

        Untrusted nodes only when the pool opted in (``chat_untrusted_nodes``): a stranger's
        machine sees every prompt it serves.
        """
        return [
            live for live in self._chat_ready() if live.node.trusted or self.settings.chat_untrusted_nodes
        ]

    def chat_withheld_models(self) -> set[str]:
        """Models untrusted nodes serve that this pool keeps prompts away from (it did not opt in)."""
        if self.settings.chat_untrusted_nodes:
            return set()
        return {m for live in self._chat_ready() if not live.node.trusted for m in live.models()}

    def _chat_ready(self) -> list[LiveNode]:
        subscribed = self.chat.subscribed()
        return [
            live
            for live in self.pool.nodes.values()
            if live.online
            and not live.node.quarantined
            and not live.node.draining
            and live.node.id in subscribed
        ]

    def _chat_checkers(self, model: str, checked_node: str) -> list[str]:
        """Trusted nodes serving ``model`` that may check another node's answer."""
        return [
            live.node.id
            for live in self.chat_nodes()
            if live.node.trusted and live.node.id != checked_node and model in live.models()
        ]


async def _every(period: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``step`` every ``period`` seconds; one failed pass is logged and the next one runs."""
    while True:
        await asyncio.sleep(period)
        try:
            await step()
        except StoreUnavailable:  # logged by the store; the next pass tries again
            pass
        except Exception:
            log.exception("%s failed", what)
