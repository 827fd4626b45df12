"""The two checks of untrusted training: recomputed steps, and a checkpoint's loss on held-out rows.

Recomputing a sample of steps (:func:`judge`) catches a node that lies about the
arithmetic of a step it hands in; it cannot see the steps it does not hand in.
The held-out check looks
at what every step adds up to: each checkpoint an untrusted node uploads is
evaluated by the coordinator on a held-out slice of the dataset, beside the last
validated checkpoint of the same VNode on the same inputs. A rise of the local
loss beyond the job's ``holdout_bound`` is a failed validation, handled exactly
like a failed recomputation: quarantine with the evidence, roll back, relocate.
A checkpoint no worse than the reference has passed (and, once its sampled steps
are recomputed too, becomes the validated one); a rise within the bound is
neither (noise, or a node poisoning slowly that its next checkpoints will show).

Judging is a pure function (:func:`judge_holdout`); the queue here only decides
what to judge next, and the service (:mod:`phage.coordinator.training`) acts.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

HOLDOUT_ROWS = 256
"""Held-out rows a checkpoint is judged on (the first of the dataset's test split)."""
KEPT_PASSES = 16
"""Unvalidated checkpoints remembered per VNode while they wait for their other check."""


@dataclass(slots=True)
class PendingCheck:
    """A step an untrusted host handed in, waiting for checkers' recomputed digests."""

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


@dataclass(frozen=True, slots=True)
class HoldoutJob:
    """One untrusted checkpoint to judge."""

    network_id: str
    vnode_id: str
    host: str
    generation: int
    checkpoint: str
    step: int


@dataclass(frozen=True, slots=True)
class HoldoutVerdict:
    """The two losses and what they mean."""

    reference_loss: float
    loss: float
    bound: float

    @property
    def regressed(self) -> bool:
        """True when the checkpoint fails (see :func:`judge_holdout`)."""
        return judge_holdout(self.reference_loss, self.loss, self.bound)

    @property
    def improved(self) -> bool:
        """True when the checkpoint is no worse than the reference: only then may it become validated.

        Between the two (worse, but within the bound) a checkpoint is neither
        caught nor validated. Were it validated, the reference would ratchet up by
        up to the bound at every checkpoint, and a node poisoning slowly would never
        be caught; nor would the checkpoint it is rolled back to be clean.
        """
        return math.isfinite(self.loss) and self.loss <= self.reference_loss


def judge_holdout(reference_loss: float, loss: float, bound: float) -> bool:
    """Does a checkpoint's held-out loss regress beyond ``bound`` over the reference's?

    A loss that is not a finite number fails: weights blown up to inf or NaN are
    the plainest regression of all, and ``nan > x`` would otherwise let them pass.
    """
    if not math.isfinite(loss):
        return True
    return loss > reference_loss + bound


@dataclass(slots=True)
class Passes:
    """Which checks an untrusted checkpoint has passed; it is validated once it passed all it needs."""

    step: int
    holdout: bool = False
    recompute: bool = False

    def complete(self, needs_recompute: bool) -> bool:
        """Both checks passed (or only the held-out one, where no steps are sampled for recomputation)."""
        return self.holdout and (self.recompute or not needs_recompute)


def evidence(job: HoldoutJob, reference: str, verdict: HoldoutVerdict, rows: int) -> dict[str, Any]:
    """What a caught node is shown with (kept in the service's record of caught nodes)."""
    return {
        "node": job.host,
        "network": job.network_id,
        "vnode": job.vnode_id,
        "check": "held-out loss",
        "checkpoint": job.checkpoint,
        "step": job.step,
        "reference": reference or "initial weights",
        "reference_loss": verdict.reference_loss,
        "loss": verdict.loss,
        "bound": verdict.bound,
        "rows": rows,
    }


def reason(job: HoldoutJob, verdict: HoldoutVerdict, rows: int) -> str:
    """The quarantine reason: one line a pool's admin can act on."""
    return (
        f"training update of VNode {job.vnode_id} (network {job.network_id}, checkpoint at step {job.step}) "
        f"raised its local loss on {rows} held-out rows from {verdict.reference_loss:.4g} "
        f"to {verdict.loss:.4g}, beyond the bound of {verdict.bound:g}"
    )


class HoldoutQueue:
    """Checkpoints waiting to be judged: the newest per VNode only, upstream VNodes first.

    Judging every checkpoint of a fast VNode would let the queue grow without end
    on a busy coordinator; the newest one carries all the updates before it, so an
    older one still waiting is replaced. Upstream first, so that a poisoning
    producer is caught (and rolled back) before its consumers are judged on inputs
    it spoiled.
    """

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], HoldoutJob] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, job: HoldoutJob) -> None:
        """Queue a checkpoint, replacing an older one of the same VNode."""
        self._waiting[(job.network_id, job.vnode_id)] = job
        self._ready.set()

    def drop_network(self, network_id: str) -> None:
        """Forget a network that ended."""
        for key in [k for k in self._waiting if k[0] == network_id]:
            del self._waiting[key]

    async def take(self, rank: dict[tuple[str, str], int]) -> HoldoutJob:
        """The next job: the one whose VNode comes first in its network (``rank``)."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        key = min(self._waiting, key=lambda k: (rank.get(k, 0), k))
        return self._waiting.pop(key)
