"""Validating job results from untrusted nodes: output-hash quorum and adaptive replication.

Pure functions, no I/O; the store applies them inside the transaction that records a
result (``store/sql_quorum.py``) and the coordinator decides each result's standing
(``coordinator/replication.py``).

The scheme follows BOINC. A job's result is a *vote*: the hash of its outputs plus its
exit code. A result from a **trusted** node settles its task alone, as it always did. A
result from an untrusted node needs ``min_quorum`` votes from distinct nodes that agree;
until they do, more copies are dispatched, up to the task's ``max_attempts`` executions in
all. When a quorum forms, its nodes gain reputation and every node that voted otherwise
has been shown wrong: it is penalised (and the coordinator quarantines it).

Adaptive replication keeps the cost down: an untrusted node whose last ``reliable_after``
validated results were all clean is **reliable**, and its result is accepted alone — except
for a random ``spot_check`` fraction, which still asks for a second opinion. The node
cannot tell which of its results are checked, so a node that starts lying after earning
trust is caught at its first checked lie. Each disagreement resets the node's clean run
and doubles the run it needs before it is trusted alone again.

Why the decision is made when a result arrives, not at dispatch: the node's record may
change while it works (it may be caught lying elsewhere meanwhile), and a check decided
after the fact cannot be anticipated by the node.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

COUNTERS = ("validated", "failed_validation", "disagreements", "attestation_refusals", "streak")
"""Reputation counters every node shows (``streak``: consecutive validated results)."""
MAX_BACKOFF_DOUBLINGS = 4
"""A node's required clean run doubles per disagreement, up to 2**4 × ``reliable_after``."""


class Standing(enum.StrEnum):
    """How much a result is believed on its own, decided when it arrives."""

    TRUSTED = "trusted"
    """From a trusted node: settles the task alone."""
    RELIABLE = "reliable"
    """From an untrusted node with a long clean record: alone, unless another vote disagrees."""
    CHECK = "check"
    """Needs agreeing results from other nodes (a new node, or a spot check)."""


@dataclass(frozen=True, slots=True)
class QuorumPolicy:
    """The coordinator's replication settings."""

    min_quorum: int = 2
    """Agreeing results (from distinct nodes) that validate an untrusted result."""
    reliable_after: int = 10
    """Consecutive validated results after which an untrusted node runs jobs alone; 0: never."""
    spot_check: float = 0.1
    """Probability that a reliable node's result is still checked by a second execution."""


@dataclass(frozen=True, slots=True)
class Record:
    """A node's reputation counters as the replication rules read them."""

    validated: int = 0
    failed_validation: int = 0
    disagreements: int = 0
    attestation_refusals: int = 0
    streak: int = 0

    @classmethod
    def of(cls, reputation: Mapping[str, int]) -> Record:
        """From a node's stored reputation (missing counters are zero)."""
        return cls(**{name: int(reputation.get(name, 0)) for name in COUNTERS})

    @property
    def strikes(self) -> int:
        """Times the node was shown wrong, in any way."""
        return self.disagreements + self.failed_validation + self.attestation_refusals


def clean_run_needed(record: Record, policy: QuorumPolicy) -> int:
    """Consecutive validated results a node needs before its results are accepted alone."""
    return policy.reliable_after << min(record.strikes, MAX_BACKOFF_DOUBLINGS)


def standing(*, trusted: bool, record: Record, policy: QuorumPolicy, roll: float) -> Standing:
    """A result's standing; ``roll`` is uniform in [0, 1) and decides spot checks."""
    if trusted:
        return Standing.TRUSTED
    if policy.reliable_after <= 0 or record.streak < clean_run_needed(record, policy):
        return Standing.CHECK
    return Standing.CHECK if roll < policy.spot_check else Standing.RELIABLE


def credited(reputation: Mapping[str, int]) -> dict[str, int]:
    """Counters after a result was validated by agreement."""
    rep = dict(reputation)
    rep["validated"] = int(rep.get("validated", 0)) + 1
    rep["streak"] = int(rep.get("streak", 0)) + 1
    return rep


def penalised(reputation: Mapping[str, int], counter: str) -> dict[str, int]:
    """Counters after the node was shown wrong: ``counter`` + 1, and its clean run starts over."""
    rep = dict(reputation)
    rep[counter] = int(rep.get(counter, 0)) + 1
    rep["streak"] = 0
    return rep


def reputation_view(reputation: Mapping[str, int]) -> dict[str, int]:
    """Every counter, zeros included, plus any others the node has, for the API."""
    return {**{name: 0 for name in COUNTERS}, **{k: int(v) for k, v in reputation.items()}}


@dataclass(frozen=True, slots=True)
class Vote:
    """One completed execution of a task: what its node produced."""

    attempt_id: str
    node_id: str
    output_sha256: str
    exit_code: int
    finished_at: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        """What must agree: the outputs' hash and the exit code."""
        return (self.output_sha256, self.exit_code)

    def describe(self) -> str:
        """``node … → output … (exit n)``, for evidence."""
        return f"node {self.node_id[:12]} → output {self.output_sha256[:16]} (exit {self.exit_code})"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A task's accepted result and who agreed or disagreed with it."""

    task_id: str
    accepted: Vote
    agreeing: tuple[Vote, ...]
    dissenting: tuple[Vote, ...]
    standing: Standing
    """Why it was accepted: alone (trusted, reliable) or by quorum (``check``)."""

    @property
    def majority(self) -> tuple[str, ...]:
        """Nodes whose results agreed with the accepted one."""
        return tuple(dict.fromkeys(v.node_id for v in self.agreeing))

    def evidence(self, dissent: Vote) -> str:
        """Why ``dissent``'s node is held wrong: what it produced against what was accepted."""
        acc = self.accepted
        backers = ", ".join(n[:12] for n in self.majority)
        return (
            f"disagreed with the accepted result of task {self.task_id}: it produced output "
            f"{dissent.output_sha256[:16]} (exit {dissent.exit_code}), the accepted output is "
            f"{acc.output_sha256[:16]} (exit {acc.exit_code}), agreed by {len(self.majority)} "
            f"node(s): {backers}"
        )


@dataclass(frozen=True, slots=True)
class QuorumOutcome:
    """A verdict that settled a task, with its voters' counters after it (for the live pool)."""

    verdict: Verdict
    reputations: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    """What a quorum task becomes after its votes were counted."""

    verdict: Verdict | None = None
    """Set when a result was accepted (the task settles on it)."""
    wanted: int = 0
    """Without a verdict: results wanted in all (completed + running + to dispatch)."""
    requeue: bool = False
    """Without a verdict: dispatch more copies."""
    fail_reason: str = ""
    """No quorum can form within the task's executions: it fails with this evidence."""


def evidence(votes: Sequence[Vote]) -> str:
    """Which node produced which hash, every vote."""
    return "; ".join(v.describe() for v in sorted(votes, key=lambda v: (v.finished_at, v.attempt_id)))


def _groups(votes: Sequence[Vote]) -> list[list[Vote]]:
    """Votes grouped by key, largest (by distinct nodes) first, then the first to reach its size."""
    by_key: dict[tuple[str, int], list[Vote]] = {}
    for v in sorted(votes, key=lambda v: (v.finished_at, v.attempt_id)):
        by_key.setdefault(v.key, []).append(v)
    return sorted(by_key.values(), key=lambda g: (-len({v.node_id for v in g}), g[-1].finished_at))


def _accept(task_id: str, winner: Vote, votes: Sequence[Vote], why: Standing) -> Step:
    agreeing = tuple(v for v in votes if v.key == winner.key)
    dissenting = tuple(v for v in votes if v.key != winner.key)
    return Step(verdict=Verdict(task_id, winner, agreeing, dissenting, why))


def decide(
    task_id: str,
    votes: Sequence[Vote],
    *,
    min_quorum: int,
    new: Mapping[str, Standing],
    open_attempts: int,
    attempts_made: int,
    max_attempts: int,
) -> Step:
    """Count a task's votes after some arrived (``new``: their standing, by attempt id).

    ``attempts_made`` counts every execution dispatched so far (lost ones too) against
    ``max_attempts``; ``open_attempts`` are still running and may yet vote.
    """
    for v in sorted(votes, key=lambda v: (v.finished_at, v.attempt_id)):
        s = new.get(v.attempt_id)
        if s is Standing.TRUSTED:
            return _accept(task_id, v, votes, s)
        if s is Standing.RELIABLE and all(o.key == v.key for o in votes):
            return _accept(task_id, v, votes, s)
    groups = _groups(votes)
    have = len({v.node_id for v in groups[0]}) if groups else 0
    if have >= min_quorum:
        return _accept(task_id, groups[0][0], votes, Standing.CHECK)
    need = min_quorum - have
    left = max(0, max_attempts - attempts_made)
    if need > open_attempts + left:
        return Step(
            fail_reason=f"no {min_quorum} results agreed within {max_attempts} executions "
            f"({len(votes)} completed): {evidence(votes)}"
        )
    more = min(max(0, need - open_attempts), left)
    return Step(wanted=len(votes) + open_attempts + more, requeue=more > 0)
