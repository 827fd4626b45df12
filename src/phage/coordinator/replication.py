"""The coordinator's half of job quorums: a job's quorum at submit, each result's standing when
it arrives, and what a settled quorum means for its voters (reputation, quarantine).

The rules themselves are pure (``domain/quorum.py``); the store counts the votes in the
transaction that records a result (``store/sql_quorum.py``). This module only feeds them what
the coordinator alone knows — whether a node is trusted, its live record, a random roll — and
acts on the verdicts.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from phage.coordinator.pool import LiveNode, OpenAttempt
from phage.coordinator.requests import TaskRequest
from phage.domain import TaskKind
from phage.domain.quorum import QuorumOutcome, QuorumPolicy, Record, Standing, standing
from phage.errors import InvalidInput
from phage.store import QueuedTask

if TYPE_CHECKING:
    from phage.coordinator.core import Coordinator

log = logging.getLogger("phage.quorum")


class Replication:
    """Decides, per job result, whether it stands alone or needs agreeing copies."""

    def __init__(self, coordinator: Coordinator, *, rng: random.Random | None = None) -> None:
        self.c = coordinator
        self.rng = rng or random.Random()
        s = coordinator.settings
        self.policy = QuorumPolicy(s.min_quorum, s.reliable_after, s.spot_check)
        self._quarantining: set[str] = set()
        """Nodes whose quarantine is being written: verdicts from other nodes' batches arrive meanwhile."""

    def plan(self, req: TaskRequest) -> tuple[int, int, dict[str, Any] | None]:
        """A job's (copies to dispatch at once, min_quorum, spec entry); (1, 0, None) for other kinds.

        A quorum the job asks for must fit in its executions; the coordinator's defaults apply to
        trusted pools too (where they change nothing), so they are fitted rather than refused.
        """
        if req.kind is not TaskKind.JOB:
            return 1, 0, None
        quorum = req.min_quorum or self.policy.min_quorum
        target = req.target_results or min(self.c.settings.target_results, req.max_attempts)
        if req.min_quorum is not None and quorum > req.max_attempts:
            raise InvalidInput(
                f"min_quorum ({quorum}) must not exceed max_attempts ({req.max_attempts}): "
                "a quorum needs that many executions",
                field="min_quorum",
            )
        if target > req.max_attempts:
            raise InvalidInput(
                f"target_results ({target}) must not exceed max_attempts ({req.max_attempts})",
                field="target_results",
            )
        return target, quorum, {"min_quorum": quorum, "target_results": target}

    def standing(self, live: LiveNode, att: OpenAttempt) -> Standing | None:
        """How far this result is believed alone; None when its task is not a quorum job."""
        if att.kind != TaskKind.JOB.value or not att.spec.get("quorum"):
            return None
        return standing(
            trusted=live.node.trusted,
            record=Record.of(live.node.reputation),
            policy=self.policy,
            roll=self.rng.random(),
        )

    def needs_distinct(self, task: QueuedTask) -> bool:
        """Must this job's copies go to distinct nodes? Once it has asked for a second opinion, or
        when it dispatches several copies at once. (A lone job may retry on the node that lost it.)"""
        quorum = task.spec.get("quorum")
        if not quorum:
            return False
        return task.id in self.c.tried or int(quorum.get("target_results", 1)) > 1

    def voted(self, task_id: str, node_id: str) -> None:
        """A node's result left its task wanting more copies: they must come from other nodes."""
        self.c.tried.setdefault(task_id, set()).add(node_id)

    async def settled(self, outcome: QuorumOutcome) -> None:
        """Mirror the voters' new counters, and quarantine each node the quorum showed wrong."""
        for node_id, rep in outcome.reputations.items():
            live = self.c.pool.nodes.get(node_id)
            if live is not None:
                live.node.reputation = rep
        verdict = outcome.verdict
        for dissent in verdict.dissenting:
            live = self.c.pool.nodes.get(dissent.node_id)
            if (live is not None and live.node.quarantined) or dissent.node_id in self._quarantining:
                continue  # its first proven disagreement is the reason on record; the rest are counted
            self.c.counters["disagreements"] = self.c.counters.get("disagreements", 0) + 1
            self._quarantining.add(dissent.node_id)
            try:
                await self.c.quarantine(dissent.node_id, verdict.evidence(dissent))
            finally:
                self._quarantining.discard(dissent.node_id)
