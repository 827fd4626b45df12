"""The result pipeline: how a reported result settles its task, in one module.

Each batch of results a node reports goes through two phases, each of which first *decides*
(a plain value, no side effects) and then *acts once*:

1. **Judge** (:meth:`ResultPipeline.judge` → :class:`Judgement`): every output must be
   uploaded at its size; the attestation must verify and match what the coordinator issued
   (``trust.py``); an untrusted (or sampled) generate pass is re-run; a quorum job's result gets
   its standing (``replication.py``). The judgement lists the refusals and what they cost the
   node (reputation marks, one quarantine), and the credits it earned.
2. **Settle** (:func:`settlement` → :class:`Settlement`): the store records the accepted results
   in one transaction and answers per result; the settlement says which attempts close, which
   tasks go back on the queue, what the feed shows, and which quorum voters were proven wrong.

:meth:`ResultPipeline._apply_judgement` and :meth:`ResultPipeline._apply_settlement` are the
only places where a result's checks change anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from phage.coordinator.counters import Counters
from phage.coordinator.feed import EventBus
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.nodes import NodeRegistry
from phage.coordinator.pool import LiveNode, LivePool
from phage.coordinator.replication import Replication
from phage.coordinator.tried import TriedNodes
from phage.coordinator.trust import TrustGuard
from phage.domain import TaskResult, TaskState
from phage.domain.generate import GenerateSpec
from phage.domain.quorum import QuorumOutcome, Standing
from phage.errors import PermissionDenied, PhageError, ProtocolError
from phage.store import FinishOutcome, SqlStore
from phage.store.blobs import BlobStore

log = logging.getLogger("phage.results")

ATTESTATION_REFUSALS = "attestation_refusals"
FAILED_VALIDATION = "failed_validation"
LOST_REASON = "result refused: see the node's quarantine reason"


@dataclass(frozen=True, slots=True)
class Mark:
    """One change to the reporting node's reputation: a refusal charged to a counter, or a credit."""

    counter: str | None
    """The reputation counter a refusal is charged to; None: a validated result (credit)."""
    reason: str = ""
    """Why (for a refusal): the quarantine reason on record if it is the first."""


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the checks concluded about a batch of results, before anything is done about it."""

    refusals: tuple[PhageError | None, ...]
    """Per result: why it is refused, or None when it goes to the store."""
    marks: tuple[Mark, ...] = ()
    """Reputation changes for the reporting node, in order."""
    rejected: tuple[str, ...] = ()
    """Attempts whose result was refused as a lie: they are lost (another node gets the task)."""
    standings: dict[str, Standing] = field(default_factory=dict)
    """Quorum jobs: how far each accepted result is believed alone."""

    @property
    def quarantine_reason(self) -> str | None:
        """The first refusal's reason: a node caught lying is quarantined once, for its first lie."""
        return next((m.reason for m in self.marks if m.counter is not None), None)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What the store's answers mean for memory, the queue, the feed and the voters."""

    outcomes: tuple[FinishOutcome | PhageError, ...]
    closed: tuple[str, ...] = ()
    """Attempts the store recorded (or had already recorded): no longer open."""
    events: tuple[tuple[str, TaskState, int | None], ...] = ()
    """(task id, its new state, the result's exit code) for the feed."""
    requeue: tuple[str, ...] = ()
    voted: tuple[str, ...] = ()
    """Quorum tasks this node voted on that still want copies: those must come from other nodes."""
    settled: tuple[str, ...] = ()
    """Tasks that reached a final state (their tried-node memory can go)."""
    verified: int = 0
    failed: int = 0
    lie: str | None = None
    """The store refused a result the checks let through (an assignment not the node's): a lie."""
    quorums: tuple[QuorumOutcome, ...] = ()


def settlement(
    items: Sequence[tuple[str, TaskResult]],
    refusals: Sequence[PhageError | None],
    recorded: Sequence[FinishOutcome | PhageError],
    standings: dict[str, Standing],
    *,
    quarantined: bool,
) -> Settlement:
    """Decide what the store's answers (``recorded``, one per unrefused item) mean."""
    answers = iter(recorded)
    outcomes: list[FinishOutcome | PhageError] = []
    closed: list[str] = []
    events: list[tuple[str, TaskState, int | None]] = []
    requeue: list[str] = []
    voted: list[str] = []
    settled: list[str] = []
    quorums: list[QuorumOutcome] = []
    verified = failed = 0
    lie: str | None = None
    for (attempt_id, result), early in zip(items, refusals, strict=True):
        outcome = early if early is not None else next(answers)
        outcomes.append(outcome)
        if isinstance(outcome, PhageError):
            if early is None and not quarantined and lie is None:
                # reporting on an assignment that is not yours (or never existed) is a lie too
                lie = f"result refused: {outcome.message}"
            continue
        closed.append(attempt_id)
        state = outcome.task_state
        if outcome.duplicate or state is None:
            continue
        if attempt_id in standings and not result.error and not state.terminal:
            voted.append(outcome.task_id)
        if outcome.requeued:
            requeue.append(outcome.task_id)
        elif state is TaskState.VERIFIED:
            verified += 1
        elif state is TaskState.FAILED:
            failed += 1
        if state.terminal:
            settled.append(outcome.task_id)
        events.append((outcome.task_id, state, result.exit_code))
        if outcome.quorum is not None:
            quorums.append(outcome.quorum)
    return Settlement(
        tuple(outcomes),
        tuple(closed),
        tuple(events),
        tuple(requeue),
        tuple(voted),
        tuple(settled),
        verified,
        failed,
        lie,
        tuple(quorums),
    )


class ResultPipeline:
    """Check, record and settle the results nodes report."""

    def __init__(
        self,
        store: SqlStore,
        pool: LivePool,
        blobs: BlobStore,
        bus: EventBus,
        nodes: NodeRegistry,
        ledger: TaskLedger,
        trust: TrustGuard,
        replication: Replication,
        tried: TriedNodes,
        counters: Counters,
        clock: Callable[[], float],
        charge: Callable[[str, GenerateSpec, str, TaskResult], Awaitable[None]] | None = None,
    ) -> None:
        self.store, self.pool, self.blobs, self.bus = store, pool, blobs, bus
        self.charge = charge
        """Generate results: charge the task's owner (task owner, spec, node, result)."""
        self.nodes, self.ledger = nodes, ledger
        self.trust, self.replication, self.tried = trust, replication, tried
        self.counters = counters
        self.clock = clock
        self._quarantining: set[str] = set()
        """Nodes whose quarantine is being written: verdicts from other nodes' batches arrive meanwhile."""

    async def submit_one(self, live: LiveNode, attempt_id: str, result: TaskResult) -> FinishOutcome:
        """Check and record one result; raises if it is refused."""
        (outcome,) = await self.submit(live, [(attempt_id, result)])
        if isinstance(outcome, PhageError):
            raise outcome
        return outcome

    async def submit(
        self, live: LiveNode, items: Sequence[tuple[str, TaskResult]], batch_signature: bytes | None = None
    ) -> list[FinishOutcome | PhageError]:
        """Check and record results; each task becomes verified, requeued or failed.

        ``batch_signature``: one attestation signature over all of ``items`` (pki.attestation.batch_payload).
        """
        await self.nodes.seen(live)
        judgement = await self.judge(live, items, batch_signature)
        await self._apply_judgement(live, judgement)
        valid = [item for item, refusal in zip(items, judgement.refusals, strict=True) if refusal is None]
        recorded: list[FinishOutcome | PhageError] = []
        if valid:
            recorded = list(
                await self.store.finish_many(live.node.id, valid, self.clock(), standing=judgement.standings)
            )
        if self.charge is not None:
            await self._charge(live.node.id, valid, recorded)
        settled = settlement(
            items, judgement.refusals, recorded, judgement.standings, quarantined=live.node.quarantined
        )
        await self._apply_settlement(live, settled)
        return list(settled.outcomes)

    async def _charge(
        self,
        node_id: str,
        valid: Sequence[tuple[str, TaskResult]],
        recorded: Sequence[FinishOutcome | PhageError],
    ) -> None:
        """Each generation recorded for the first time is charged to its task's owner."""
        assert self.charge is not None
        for (attempt_id, result), outcome in zip(valid, recorded, strict=True):
            att = self.pool.attempts.get(attempt_id)
            if (
                isinstance(outcome, PhageError)
                or outcome.duplicate
                or att is None
                or att.spec.generate is None
            ):
                continue
            task = await self.store.get_task(att.task_id)
            if task is not None:
                await self.charge(task.owner, att.spec.generate, node_id, result)

    # ---- deciding -----------------------------------------------------------

    async def judge(
        self, live: LiveNode, items: Sequence[tuple[str, TaskResult]], batch_signature: bytes | None
    ) -> Judgement:
        """Run every check on a batch; nothing is changed but the results' batch attestation."""
        if batch_signature is not None:
            if not self.trust.check_batch(live, list(items), batch_signature):
                refusal = PermissionDenied(
                    "batch attestation signature does not verify with this node's key",
                    field="batch_signature",
                )
                mark = Mark(ATTESTATION_REFUSALS, f"attestation refused: {refusal.message}")
                return Judgement(tuple(refusal for _ in items), (mark,))
            for _, result in items:
                result.attestation = "batch:" + batch_signature.hex()
        refusals: list[PhageError | None] = []
        marks: list[Mark] = []
        rejected: list[str] = []
        standings: dict[str, Standing] = {}
        for attempt_id, result in items:
            problem = self._check_outputs(result)
            att = self.pool.attempts.get(attempt_id)
            if problem is None and att is not None and att.node_id == live.node.id:
                problem = self.trust.check_attestation(live, att, result, signed=batch_signature is not None)
                if problem is not None:
                    marks.append(Mark(ATTESTATION_REFUSALS, f"attestation refused: {problem.message}"))
                elif self.trust.wants_reverify(live, att, result):
                    problem = await self.trust.reverify(att, result)
                    marks.append(Mark(FAILED_VALIDATION, problem.message) if problem else Mark(None))
                if problem is not None:
                    rejected.append(attempt_id)
            refusals.append(problem)
            stand = self.replication.standing(live, att) if problem is None and att is not None else None
            if stand is not None:
                standings[attempt_id] = stand
        return Judgement(tuple(refusals), tuple(marks), tuple(rejected), standings)

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

    # ---- acting -------------------------------------------------------------

    async def _apply_judgement(self, live: LiveNode, judgement: Judgement) -> None:
        """Reputation marks in order, one quarantine for the first lie, and the lied-about work lost."""
        for mark in judgement.marks:
            if mark.counter is None:
                live.node.reputation = await self.store.credit_node(live.node.id)
            else:
                # its clean run starts over too: a released node earns single execution again
                live.node.reputation = await self.store.penalise_node(live.node.id, mark.counter)
        reason = judgement.quarantine_reason
        if reason is not None:
            await self.nodes.quarantine(live.node.id, reason)
        if judgement.rejected:
            await self.ledger.lose(judgement.rejected, LOST_REASON)

    async def _apply_settlement(self, live: LiveNode, s: Settlement) -> None:
        """Close attempts, count, publish, requeue; then what settled quorums showed about voters."""
        for attempt_id in s.closed:
            self.pool.drop_attempt(attempt_id)
        for task_id in s.voted:
            self.replication.voted(task_id, live.node.id)
        for task_id in s.settled:
            self.tried.forget(task_id)
        self.counters.verified += s.verified
        self.counters.failed += s.failed
        for task_id, state, exit_code in s.events:
            self.bus.task(task_id, state.value, node=live.node.id, exit_code=exit_code)
        for quorum in s.quorums:
            await self._quorum_settled(quorum)
        if s.lie is not None:
            live.node.reputation = await self.store.penalise_node(live.node.id, ATTESTATION_REFUSALS)
            await self.nodes.quarantine(live.node.id, s.lie)
        await self.ledger.requeue(s.requeue)

    async def _quorum_settled(self, outcome: QuorumOutcome) -> None:
        """Mirror the voters' new counters, and quarantine each node the quorum showed wrong."""
        for node_id, rep in outcome.reputations.items():
            voter = self.pool.nodes.get(node_id)
            if voter is not None:
                voter.node.reputation = rep
        verdict = outcome.verdict
        for dissent in verdict.dissenting:
            voter = self.pool.nodes.get(dissent.node_id)
            if (voter is not None and voter.node.quarantined) or dissent.node_id in self._quarantining:
                continue  # its first proven disagreement is the reason on record; the rest are counted
            self.counters.disagreements += 1
            self._quarantining.add(dissent.node_id)
            try:
                await self.nodes.quarantine(dissent.node_id, verdict.evidence(dissent))
            finally:
                self._quarantining.discard(dissent.node_id)
