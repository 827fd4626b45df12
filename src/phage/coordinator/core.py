"""The coordinator's use cases: submit, cancel, register, heartbeat, dispatch, results.

The HTTP routes and the gRPC servicer are thin edges over this class; it owns
the store, the blob store, the live pool, the ready queue and the event bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from phage.coordinator.admission import Admission
from phage.coordinator.chat import ChatRouter
from phage.coordinator.feed import EventBus
from phage.coordinator.keys import ApiKeys, Principal
from phage.coordinator.placement import ModelPlacement
from phage.coordinator.pool import LiveNode, LivePool, OpenAttempt
from phage.coordinator.replication import Replication
from phage.coordinator.requests import TaskRequest
from phage.coordinator.settings import CoordinatorSettings
from phage.coordinator.state import DataDir
from phage.coordinator.trust import TrustGuard
from phage.coordinator.workloads import FILE_NAME as WORKLOADS_FILE
from phage.coordinator.workloads import ApprovedWorkloads
from phage.domain import (
    Assignment,
    Attempt,
    Node,
    NodeState,
    Task,
    TaskKind,
    TaskResult,
    TaskState,
)
from phage.domain.ids import new_id
from phage.domain.quorum import Standing
from phage.errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    PhageError,
    ProtocolError,
    SandboxError,
    Unauthenticated,
)
from phage.pki import CertificateAuthority, verify_signature
from phage.pki.attestation import input_hash
from phage.pki.identity import node_id_from_public_key, register_signing_payload
from phage.sandbox import Sandbox, make_sandbox
from phage.scheduler import NodeView, ReadyQueue, eligible
from phage.store import FinishOutcome, QueuedTask, SqlStore
from phage.store.blobs import BlobStore

log = logging.getLogger("phage.coordinator")

REGISTER_CLOCK_SKEW_S = 300
MONITOR_PERIOD_S = 0.25


@dataclass(frozen=True, slots=True)
class Dispatch:
    """An assignment plus the workspace bytes sent inline with it (if small)."""

    assignment: Assignment
    workspace: bytes | None
    workspace_sha256: str
    workspace_size: int
    input_sha256: str


@dataclass(frozen=True, slots=True)
class Registration:
    """What Register hands back to a node."""

    node_id: str
    client_cert_pem: bytes
    ca_cert_pem: bytes
    status: str = "accepted"
    """``pending`` while the node waits for an admin's approval."""


def _node_models(live: LiveNode) -> list[str]:
    """Models a node serves now: what its engine reports (at least the loaded one)."""
    models = live.metrics.get("models") or live.node.hardware.get("models") or []
    if live.node.loaded_model and live.node.loaded_model not in models:
        return [live.node.loaded_model, *models]
    return list(models)


class Coordinator:
    """The pool's brain: durable queue, live nodes, placement, results."""

    def __init__(self, settings: CoordinatorSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.dirs = DataDir(settings.data_dir)
        self.store = SqlStore(settings.db_url, synchronous=settings.sqlite_synchronous)
        self.blobs = BlobStore(self.dirs.blobs)
        self.bus = EventBus()
        self.pool = LivePool()
        self.queue = ReadyQueue()
        self.keys = ApiKeys(self.store)
        self.workloads = ApprovedWorkloads(
            self.dirs.root / WORKLOADS_FILE, enforced=settings.approved_workloads_only
        )
        self.ca: CertificateAuthority | None = None
        self.join_token = ""
        self.admin_key = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = 0.0
        self.counters: dict[str, int] = {"submitted": 0, "verified": 0, "failed": 0, "requeued": 0}
        self.trust = TrustGuard(self)
        self.replication = Replication(self)
        self.admission = Admission(self)
        self.chat = ChatRouter()
        self.placement = ModelPlacement(self)
        self.verify_sandbox: Sandbox | None = None
        self.tried: dict[str, set[str]] = {}
        """Best-of-N tasks: the nodes that already held an attempt (distinct-node placement)."""
        self._renewed: set[str] = set()
        """Attempts whose lease was renewed since the last flush to the store."""
        self._read_small_blob = lru_cache(maxsize=256)(self.blobs.read)

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open the store, load the CA and secrets, rebuild live state, start the monitors."""
        self.dirs.prepare()
        self.ca = CertificateAuthority.load_or_create(self.dirs.pki)
        self.join_token = self.settings.join_token or self.dirs.join_token()
        try:
            # probing a backend runs it once (gVisor: about a second): keep the loop free meanwhile
            self.verify_sandbox = await asyncio.to_thread(make_sandbox, self.settings.verify_sandbox)
        except SandboxError as exc:
            log.warning("re-verification disabled: %s", exc.message)
        await self.store.open()
        self.admin_key = await self.keys.ensure_admin(self.dirs.admin_key_file, self.clock())
        await self._recover()
        await self.admission.start()
        self.started_at = self.clock()
        self._tasks = [
            asyncio.create_task(self._monitor(), name="phage-liveness"),
            asyncio.create_task(self._flush_heartbeats(), name="phage-heartbeat-flush"),
            asyncio.create_task(self.admission.watch(), name="phage-admission"),
        ]

    async def stop(self) -> None:
        """Stop the monitors and close the store."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._flush_once()
        await self.store.close()

    async def _recover(self) -> None:
        """Rebuild memory from the store; every node gets one lease of grace to reconnect."""
        now = self.clock()
        self.queue.extend(await self.store.queued_tasks())
        for node in await self.store.list_nodes():
            if node.state is NodeState.REMOVED:
                continue
            self.pool.nodes[node.id] = LiveNode(
                node=node, last_seen=now if node.state is NodeState.ONLINE else 0.0
            )
        for att in await self.store.open_attempts():
            task = await self.store.get_task(att.task_id)
            if task is None:
                continue
            self.pool.add_attempt(
                self._open_attempt(att, task.kind.value, task.spec, now + self.settings.lease_s)
            )
        multi = [t.id for t in self.queue.tasks() if int(t.spec.get("replicas", 1)) > 1]
        self.tried.update(await self.store.nodes_tried(multi))
        quorum_jobs = [t.id for t in self.queue.tasks() if t.spec.get("quorum")]
        self.tried.update(await self.store.quorum_voters(quorum_jobs))
        log.info(
            "recovered %d queued tasks, %d open attempts, %d nodes",
            len(self.queue),
            len(self.pool.attempts),
            len(self.pool.nodes),
        )

    # ---- tasks -------------------------------------------------------------

    async def submit(self, requests: Sequence[TaskRequest], principal: Principal) -> list[Task]:
        """Store and queue tasks; nothing is written unless all of them are valid."""
        self.workloads.check(requests)
        now = self.clock()
        made: list[Task] = []
        for req in requests:
            spec: dict[str, Any] = {"isolation": req.isolation}
            replicas = 1
            if req.manifest is not None:
                spec["manifest"] = req.manifest.to_dict()
            if req.generate is not None:
                if not req.wait_for_model:
                    self.placement.check_submit(req.generate.model)
                spec["generate"] = req.generate.to_dict()
                replicas = spec["replicas"] = req.generate.n
            copies, min_quorum, quorum = self.replication.plan(req)
            if quorum is not None:
                replicas, spec["quorum"] = copies, quorum
            if req.workspace is not None:
                spec["workspace"] = self.blobs.put(req.workspace)
                spec["workspace_size"] = len(req.workspace)
            for _ in range(req.count):
                made.append(
                    Task(
                        id=new_id("t"),
                        kind=req.kind,
                        state=TaskState.QUEUED,
                        spec=spec,
                        priority=req.priority,
                        max_attempts=req.max_attempts,
                        created_at=now,
                        updated_at=now,
                        owner=principal.key_id,
                        labels=req.labels,
                        replicas=replicas,
                        min_quorum=min_quorum,
                    )
                )
        await self.store.add_tasks(made)
        for task in made:
            self.queue.push(QueuedTask(task.id, task.kind.value, task.priority, task.created_at, task.spec))
            self.bus.task(task.id, TaskState.QUEUED.value, kind=task.kind.value)
        self.counters["submitted"] += len(made)
        self._wake_for([QueuedTask(t.id, t.kind.value, t.priority, t.created_at, t.spec) for t in made])
        return made

    def _wake_for(self, tasks: list[QueuedTask]) -> None:
        """Wake long-polling nodes that can take these tasks: enough for all of them, and no more.

        Waking only eligible nodes matters once nodes differ (models, sandboxes): a node
        woken for work it cannot take would leave that work waiting for the next poll.
        """
        wanted = len(tasks)
        if not wanted:
            return
        sample = tasks[:64]  # eligibility rarely differs inside one batch; bound the work per wake
        for node_id in list(self.pool.waiting):
            live = self.pool.nodes.get(node_id)
            if live is None or not self.admission.accepts_work(live):
                continue
            view = NodeView(node_id, 1, frozenset(live.node.sandboxes), frozenset(_node_models(live)))
            if any(eligible(t, view) for t in sample):
                live.wake.set()
                wanted -= live.free_slots
                if wanted <= 0:
                    return

    def models_of(self, live: LiveNode) -> list[str]:
        """Models a node serves now."""
        return _node_models(live)

    def chat_nodes(self) -> list[LiveNode]:
        """Nodes that may take chat now: online, not quarantined, holding a chat order stream."""
        subscribed = self.chat.subscribed()
        return [
            live
            for live in self.pool.nodes.values()
            if live.online
            and not live.node.quarantined
            and not live.node.draining
            and live.node.id in subscribed
        ]

    async def get_task(self, task_id: str) -> tuple[Task, list[Attempt]]:
        """A task and all its attempts."""
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}", field="id")
        return task, await self.store.attempts_for(task_id)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task, telling any node running it to stop."""
        task, stopped = await self.store.cancel_task(task_id, self.clock())
        self.queue.discard(task_id)
        self.tried.pop(task_id, None)
        for att in stopped:
            self.pool.drop_attempt(att.id)
            live = self.pool.nodes.get(att.node_id)
            if live is not None:
                live.cancels.append(att.id)
                live.wake.set()
        self.bus.task(task_id, task.state.value)
        return task

    # ---- node enrollment and identity --------------------------------------

    async def register(
        self,
        *,
        join_token: str,
        public_key: bytes,
        csr_pem: bytes,
        timestamp_ms: int,
        signature: bytes,
        info: dict[str, Any],
    ) -> Registration:
        """Admit a node that holds the join token and proves its identity key."""
        assert self.ca is not None
        self.admission.check_token(join_token)
        node_id = node_id_from_public_key(public_key)
        if abs(self.clock() * 1000 - timestamp_ms) > REGISTER_CLOCK_SKEW_S * 1000:
            raise InvalidInput(
                f"registration timestamp is more than {REGISTER_CLOCK_SKEW_S}s from the coordinator's clock",
                field="timestamp_unix_ms",
            )
        if not verify_signature(
            node_id, signature, register_signing_payload(csr_pem, timestamp_ms, join_token)
        ):
            raise Unauthenticated("identity signature does not verify", field="identity_signature")
        existing = await self.store.get_node(node_id)
        admitted = await self.admission.admit(node_id, existing)
        cert_pem, serial = self.ca.sign_node_csr(csr_pem, node_id)
        now = self.clock()
        node = Node(
            id=node_id,
            name=str(info.get("name") or info.get("hostname") or node_id[:8]),
            state=NodeState.ONLINE,
            registered_at=existing.registered_at if existing else now,
            last_heartbeat=now,
            max_concurrency=max(1, min(int(info.get("max_concurrency") or 4), 1024)),
            hardware=info,
            sandboxes=list(info.get("sandboxes", [])),
            loaded_model=str(info.get("loaded_model", "")),
            version=str(info.get("phage_version", "")),
            cert_serial=serial,
        )
        if existing is not None:  # re-registering keeps what the pool learned about this node
            node.trusted, node.reputation = existing.trusted, existing.reputation
            node.quarantined, node.quarantine_reason = existing.quarantined, existing.quarantine_reason
        admitted.apply(node)
        await self.store.upsert_node(node)
        live = self.pool.nodes.get(node_id)
        if live is None:
            self.pool.nodes[node_id] = LiveNode(node=node, last_seen=now)
        else:
            live.node, live.last_seen = node, now
        self.bus.node(node_id, node.state.value, name=node.name, event="registered")
        log.info("node %s (%s) registered", node.name, node_id)
        status = "pending" if node.state is NodeState.PENDING else "accepted"
        return Registration(node_id, cert_pem, self.ca.cert_pem, status)

    def authenticate_node(self, cert_node_id: str | None, claimed: str) -> LiveNode:
        """The live node behind an mTLS peer, refusing one that speaks for another."""
        if not cert_node_id:
            raise Unauthenticated("a client certificate issued by this coordinator is required")
        if claimed and claimed != cert_node_id:
            raise PermissionDenied(
                f"certificate belongs to node {cert_node_id}; it cannot act as {claimed}", field="node_id"
            )
        live = self.pool.nodes.get(cert_node_id)
        if live is None or live.node.state.shut_out:
            why = f" ({live.node.state.value})" if live is not None else ""
            raise PermissionDenied(f"node {cert_node_id} is not a member of this pool{why}", field="node_id")
        return live

    async def _seen(self, live: LiveNode) -> None:
        live.last_seen = self.clock()
        live.dirty = True
        if live.node.state is NodeState.DEAD:
            live.node.state = NodeState.ONLINE
            await self.store.set_node_state(live.node.id, NodeState.ONLINE)
            self.bus.node(live.node.id, NodeState.ONLINE.value, name=live.node.name, event="revived")

    # ---- node work loop ----------------------------------------------------

    async def heartbeat(
        self, live: LiveNode, metrics: dict[str, Any], running: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Record liveness, renew leases; returns (cancel, unknown) assignment ids."""
        await self._seen(live)
        before = _node_models(live)
        live.metrics = metrics
        if metrics.get("loaded_model") is not None:
            live.node.loaded_model = str(metrics["loaded_model"])
        self.placement.observe(live)
        if _node_models(live) != before:
            live.wake.set()  # a model arrived: queued work for it may fit now
        lease = self.clock() + self.settings.lease_s
        unknown: list[str] = []
        for aid in running:
            att = self.pool.attempts.get(aid)
            if att is None or att.node_id != live.node.id:
                unknown.append(aid)
            else:
                att.lease_expires_at = lease
                self._renewed.add(aid)
        cancels, live.cancels = live.cancels, []
        return cancels, unknown

    async def fetch(self, live: LiveNode, max_tasks: int, wait_ms: int) -> tuple[list[Dispatch], list[str]]:
        """Long-poll: assignments for this node, or cancellations, or nothing at the deadline."""
        await self._seen(live)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_ms, self.settings.fetch_wait_ms_max) / 1000
        node_id = live.node.id
        while True:
            live.wake.clear()
            if live.cancels:
                cancels, live.cancels = live.cancels, []
                return [], cancels
            # The node counts its own free slots; results it is still reporting hold no slot there,
            # so allow that much pipelining, bounded at twice its concurrency.
            limit = self.admission.dispatch_limit(live, max_tasks)
            if limit > 0 and len(self.queue) and live.online and not live.node.quarantined:
                view = NodeView(node_id, limit, frozenset(live.node.sandboxes), frozenset(_node_models(live)))
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
        gen = task.spec.get("generate") or {}
        if gen.get("distinct", "wait") == "wait":
            return False
        return not any(
            live.node.id not in tried
            and not live.node.quarantined
            and eligible(
                task, NodeView(live.node.id, 1, frozenset(live.node.sandboxes), frozenset(_node_models(live)))
            )
            for live in self.pool.online_nodes()
        )

    async def _claim(self, live: LiveNode, picked: list[QueuedTask]) -> list[Dispatch]:
        now = self.clock()
        by_id = {t.id: t for t in picked}
        try:
            claimed = await self.store.claim_replicas(live.node.id, list(by_id), now, self.settings.lease_s)
        except Exception:
            self.queue.extend(picked)  # still queued in the store: keep them offerable
            raise
        out: list[Dispatch] = []
        for att, more in claimed:
            task = by_id[att.task_id]
            if more:
                self.queue.push(task)  # best-of-N: further attempts still wanted
            if int(task.spec.get("replicas", 1)) > 1 or self.replication.needs_distinct(task):
                self.tried.setdefault(task.id, set()).add(live.node.id)
            dispatch = self._dispatch(att, task)
            self.pool.add_attempt(
                self._open_attempt(att, task.kind, task.spec, att.lease_expires_at, dispatch.input_sha256)
            )
            out.append(dispatch)
            self.bus.task(att.task_id, TaskState.DISPATCHED.value, node=live.node.id, attempt=att.id)
        return out

    def _open_attempt(
        self, att: Attempt, kind: str, spec: dict[str, Any], lease: float, input_sha256: str | None = None
    ) -> OpenAttempt:
        if input_sha256 is None:
            input_sha256 = self._input_sha256(att.task_id, kind, spec)
        return OpenAttempt(att.id, att.task_id, att.node_id, lease, kind, spec, input_sha256)

    @staticmethod
    def _input_sha256(task_id: str, kind: str, spec: dict[str, Any]) -> str:
        return input_hash(
            task_id=task_id,
            kind=kind,
            manifest=spec.get("manifest"),
            generate=spec.get("generate"),
            workspace_sha256=str(spec.get("workspace") or ""),
            isolation=str(spec.get("isolation", "any")),
        )

    def _dispatch(self, att: Attempt, task: QueuedTask) -> Dispatch:
        digest = str(task.spec.get("workspace") or "")
        size = int(task.spec.get("workspace_size") or 0)
        inline = None
        if digest and size <= self.settings.inline_workspace_bytes:
            inline = self._read_small_blob(digest)
        assignment = Assignment(att.id, att.task_id, TaskKind(task.kind), task.spec, att.lease_expires_at)
        return Dispatch(
            assignment, inline, digest, size, self._input_sha256(att.task_id, task.kind, task.spec)
        )

    async def start_tasks(self, live: LiveNode, attempt_ids: Sequence[str]) -> list[str]:
        """The node began these; returns any it should not run."""
        await self._seen(live)
        mine = [a for a in attempt_ids if (att := self.pool.attempts.get(a)) and att.node_id == live.node.id]
        not_wanted = await self.store.mark_running(live.node.id, mine, self.clock())
        lease = self.clock() + self.settings.lease_s
        for aid in mine:
            if aid not in not_wanted:
                self.pool.attempts[aid].lease_expires_at = lease
                self.bus.task(self.pool.attempts[aid].task_id, TaskState.RUNNING.value, node=live.node.id)
        return [a for a in attempt_ids if a not in mine] + not_wanted

    async def submit_result(self, live: LiveNode, attempt_id: str, result: TaskResult) -> FinishOutcome:
        """Check and record one result; raises if it is refused."""
        (outcome,) = await self.submit_results(live, [(attempt_id, result)])
        if isinstance(outcome, PhageError):
            raise outcome
        return outcome

    async def submit_results(
        self, live: LiveNode, items: Sequence[tuple[str, TaskResult]], batch_signature: bytes | None = None
    ) -> list[FinishOutcome | PhageError]:
        """Check and record results; each task becomes verified, requeued or failed.

        ``batch_signature``: one attestation signature over all of ``items`` (pki.attestation.batch_payload).
        """
        await self._seen(live)
        if batch_signature is not None:
            if not self.trust.check_batch(live, list(items), batch_signature):
                refusal = PermissionDenied(
                    "batch attestation signature does not verify with this node's key",
                    field="batch_signature",
                )
                await self.trust.punish(
                    live, f"attestation refused: {refusal.message}", "attestation_refusals"
                )
                return [refusal for _ in items]
            for _, result in items:
                result.attestation = "batch:" + batch_signature.hex()
        outcomes: list[FinishOutcome | PhageError | None] = []
        valid: list[tuple[str, TaskResult]] = []
        standings: dict[str, Standing] = {}
        """Quorum jobs: how far each result is believed alone (coordinator/replication.py)."""
        rejected: list[str] = []
        for attempt_id, result in items:
            problem = self._check_outputs(result)
            att = self.pool.attempts.get(attempt_id)
            if problem is None and att is not None and att.node_id == live.node.id:
                problem = self.trust.check_attestation(live, att, result, signed=batch_signature is not None)
                if problem is not None:
                    await self.trust.punish(
                        live, f"attestation refused: {problem.message}", "attestation_refusals"
                    )
                elif self.trust.wants_reverify(live, att, result):
                    problem = await self.trust.reverify(att, result)
                    if problem is not None:
                        await self.trust.punish(live, problem.message, "failed_validation")
                    else:
                        await self.trust.credit(live)
                if problem is not None:
                    rejected.append(attempt_id)
            outcomes.append(problem)
            if problem is None:
                valid.append((attempt_id, result))
                if att is not None and (standing := self.replication.standing(live, att)) is not None:
                    standings[attempt_id] = standing
        if rejected:
            await self._lose(rejected, "result refused: see the node's quarantine reason")
        finish = self.store.finish_many
        recorded = iter(await finish(live.node.id, valid, self.clock(), standing=standings) if valid else [])
        final: list[FinishOutcome | PhageError] = []
        requeue: list[str] = []
        for (attempt_id, result), early in zip(items, outcomes, strict=True):
            outcome = early if early is not None else next(recorded)
            final.append(outcome)
            if isinstance(outcome, PhageError):
                if early is None and not live.node.quarantined:
                    # reporting on an assignment that is not yours (or never existed) is a lie too
                    await self.trust.punish(
                        live, f"result refused: {outcome.message}", "attestation_refusals"
                    )
                continue
            self.pool.drop_attempt(attempt_id)
            if outcome.duplicate or outcome.task_state is None:
                continue
            if attempt_id in standings and not result.error and not outcome.task_state.terminal:
                self.replication.voted(outcome.task_id, live.node.id)
            if outcome.requeued:
                requeue.append(outcome.task_id)
            elif outcome.task_state is TaskState.VERIFIED:
                self.counters["verified"] += 1
            elif outcome.task_state is TaskState.FAILED:
                self.counters["failed"] += 1
            if outcome.task_state.terminal:
                self.tried.pop(outcome.task_id, None)
            self.bus.task(
                outcome.task_id, outcome.task_state.value, node=live.node.id, exit_code=result.exit_code
            )
            if outcome.quorum is not None:
                await self.replication.settled(outcome.quorum)
        if requeue:
            await self._requeue(requeue)
        return final

    def _check_outputs(self, result: TaskResult) -> PhageError | None:
        """The coordinator recomputes what it can: every output must be uploaded, at its size."""
        for out in result.outputs:
            size = self.blobs.size(out.sha256)
            if size is None:
                return ProtocolError(
                    f"output {out.path!r} was not uploaded (sha256 {out.sha256})", field="outputs"
                )
            if size != out.size:
                return ProtocolError(f"output {out.path!r} is {size} bytes, not {out.size}", field="outputs")
        return None

    async def _requeue(self, task_ids: list[str]) -> None:
        """Offer tasks again that the store says want another attempt."""
        pushed = []
        for task_id in task_ids:
            task = await self.store.get_task(task_id)
            if task is not None and not task.state.terminal:
                queued = QueuedTask(task.id, task.kind.value, task.priority, task.created_at, task.spec)
                self.queue.push(queued)
                pushed.append(queued)
        self.counters["requeued"] += len(pushed)
        self._wake_for(pushed)

    # ---- liveness ----------------------------------------------------------

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(min(MONITOR_PERIOD_S, self.settings.heartbeat_interval_s / 4))
            try:
                await self.check_liveness()
            except Exception:  # keep watching even if one pass fails
                log.exception("liveness check failed")

    async def check_liveness(self) -> None:
        """Declare silent nodes dead and requeue work whose lease lapsed."""
        now = self.clock()
        deadline = self.settings.lease_s
        for live in list(self.pool.nodes.values()):
            if live.online and now - live.last_seen > deadline:
                live.node.state = NodeState.DEAD
                await self.store.set_node_state(live.node.id, NodeState.DEAD)
                self.bus.node(live.node.id, NodeState.DEAD.value, name=live.node.name)
                log.warning(
                    "node %s missed %d heartbeats: dead", live.node.name, self.settings.missed_heartbeats
                )
                await self._lose(list(live.attempts), f"node {live.node.name} stopped sending heartbeats")
                self.chat.node_lost(live.node.id, "stopped sending heartbeats")
        expired = [a.id for a in self.pool.attempts.values() if a.lease_expires_at < now]
        if expired:
            await self._lose(expired, "assignment lease expired")

    async def _lose(self, attempt_ids: list[str], reason: str) -> None:
        if not attempt_ids:
            return
        outcomes = await self.store.fail_lost(attempt_ids, reason, self.clock())
        for aid in attempt_ids:
            self.pool.drop_attempt(aid)
        for out in outcomes:
            self.bus.task(out.task_id, out.task_state.value, reason=reason, attempt=out.attempt_id)
        requeue = [out.task_id for out in outcomes if out.requeued]
        if requeue:
            await self._requeue(requeue)

    async def _flush_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._flush_once()
            except Exception:
                log.exception("heartbeat flush failed")

    async def _flush_once(self) -> None:
        beats = []
        for live in self.pool.nodes.values():
            if live.dirty:
                live.dirty = False
                beats.append((live.node.id, live.last_seen, live.node.loaded_model))
        leases = [(a.id, a.lease_expires_at) for aid in self._renewed if (a := self.pool.attempts.get(aid))]
        self._renewed.clear()
        await self.store.record_heartbeats(beats, leases)

    # ---- admin -------------------------------------------------------------

    async def quarantine(self, node_id: str, reason: str) -> None:
        """Give a node no more work until an admin releases it; its open work goes elsewhere."""
        await self.store.set_quarantine(node_id, True, reason)
        live = self.pool.nodes.get(node_id)
        if live is not None:
            live.node.quarantined, live.node.quarantine_reason = True, reason
            await self._lose(list(live.attempts), f"node quarantined: {reason}")
            name = live.node.name
        else:
            name = node_id
        log.warning("node %s quarantined: %s", name, reason)
        self.bus.node(node_id, "quarantined", reason=reason)

    async def release(self, node_id: str) -> None:
        """Lift a node's quarantine (admin)."""
        await self.store.set_quarantine(node_id, False, "")
        live = self.pool.nodes.get(node_id)
        if live is not None:
            live.node.quarantined, live.node.quarantine_reason = False, ""
            live.wake.set()
        self.bus.node(node_id, "released")

    async def remove_node(self, node_id: str) -> None:
        """Shut a node out: its certificate is refused from now on and its work requeued."""
        await self.store.set_node_state(node_id, NodeState.REMOVED)
        live = self.pool.nodes.pop(node_id, None)
        if live is not None:
            await self._lose(list(live.attempts), "node removed by an admin")
            live.wake.set()
        self.bus.node(node_id, NodeState.REMOVED.value)
