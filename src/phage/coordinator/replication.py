"""The coordinator's half of job quorums: a job's quorum at submit, each result's standing when
it arrives, and what a settled quorum means for its voters (reputation, quarantine).

The rules themselves are pure (``domain/quorum.py``); the store counts the votes in the
transaction that records a result (``store/sql_quorum.py``). This module only feeds them what
the coordinator alone knows — whether a node is trusted, its live record, a random roll. It
decides and never acts: what a settled quorum does to its voters is applied by the result
pipeline (``coordinator/results.py``), in the one place where results settle.
"""

from __future__ import annotations

import logging
import random

from phage.coordinator.pool import LiveNode, OpenAttempt
from phage.coordinator.requests import TaskRequest
from phage.coordinator.tried import TriedNodes
from phage.domain import QuorumSpec, TaskKind
from phage.domain.quorum import QuorumPolicy, Record, Standing, standing
from phage.errors import InvalidInput
from phage.store import QueuedTask

log = logging.getLogger("phage.quorum")


class Replication:
    """Decides, per job result, whether it stands alone or needs agreeing copies."""

    def __init__(
        self,
        policy: QuorumPolicy,
        target_results: int,
        tried: TriedNodes,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.target_results = target_results
        """Copies a job dispatches at once unless it asks otherwise."""
        self.tried = tried
        self.rng = rng or random.Random()

    def plan(self, req: TaskRequest) -> tuple[int, int, QuorumSpec | None]:
        """A job's (copies to dispatch at once, min_quorum, quorum spec); (1, 0, None) for other kinds.

        A quorum the job asks for must fit in its executions; the coordinator's defaults apply to
        trusted pools too (where they change nothing), so they are fitted rather than refused.
        """
        if req.kind is not TaskKind.JOB:
            return 1, 0, None
        quorum = req.min_quorum or self.policy.min_quorum
        target = req.target_results or min(self.target_results, req.max_attempts)
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
        return target, quorum, QuorumSpec(quorum, target)

    def standing(self, live: LiveNode, att: OpenAttempt) -> Standing | None:
        """How far this result is believed alone; None when its task is not a quorum job."""
        if att.kind != TaskKind.JOB.value or att.spec.quorum is None:
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
        quorum = task.spec.quorum
        if quorum is None:
            return False
        return task.id in self.tried or quorum.target_results > 1

    def voted(self, task_id: str, node_id: str) -> None:
        """A node's result left its task wanting more copies: they must come from other nodes."""
        self.tried.add(task_id, node_id)
