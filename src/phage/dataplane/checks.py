"""Checked activations: a sample of an untrusted hop's steps recomputed on another node.

Petals, Parallax and exo trust every server's activations. phage does not: for a
hop on an untrusted node, each step is checked with probability ``rate``. A check
opens a fresh session on a *verifier* — another node holding the same blocks, a
trusted one when there is one — sends it the hop's whole input history for the
session as one prefill chunk plus the step's input, and compares the verifier's
output for the step with what the hop returned. The node cannot tell which of its
steps are checked: the verifier is another machine, asked after the fact.

The prefill computes the same function in a different shape (one chunk of n
positions instead of n steps of one), so results agree to rounding, not bit for
bit: outputs match when ``max|a - b| <= atol + rtol * max|b|``. Honest float32 CPU
stages differ by ~1e-6 of their scale; the defaults leave two orders of magnitude
of room, and a corrupting node (noise of 1 % of the scale) is far outside it.

A mismatch is :class:`Evidence`: the caller quarantines the node with it and fails
the session over to another node.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from phage.dataplane.stage_frames import forward_frame
from phage.dataplane.tensors import tensor_from_pb
from phage.dataplane.transport import Dial, close_peers
from phage.domain.blocks import BlockRange
from phage.errors import PhageError

RTOL = 1e-4
ATOL = 1e-5


@dataclass(frozen=True, slots=True)
class Verifier:
    """A node that can recompute a hop: it holds the hop's blocks."""

    node_id: str
    address: str
    blocks: BlockRange


@dataclass(frozen=True, slots=True)
class Evidence:
    """A step whose output another node computed differently."""

    node_id: str
    verifier_id: str
    model: str
    blocks: str
    step: int
    max_abs_diff: float
    scale: float
    tolerance: float

    def describe(self) -> str:
        """One line for the quarantine reason."""
        return (
            f"activations of blocks {self.blocks} of {self.model!r} at step {self.step} differ from "
            f"node {self.verifier_id[:16]}'s recomputation by {self.max_abs_diff:.3g} "
            f"(scale {self.scale:.3g}, tolerance {self.tolerance:.3g})"
        )


FindVerifier = Callable[[BlockRange, int, Collection[str]], Awaitable[Verifier | None]]
"""``find(blocks, start, avoid)``: a node holding blocks ``start``..``blocks.end``, not in ``avoid``."""


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """Which hops are checked, how often, and against whom."""

    rate: float
    """Probability that one step of an untrusted hop is recomputed (1.0: every step)."""
    untrusted: Callable[[str], bool]
    """Whether a node's activations need checking."""
    find_verifier: FindVerifier
    report: Callable[[Evidence], Awaitable[None]]
    """Called with the evidence of a mismatch (the coordinator quarantines the node)."""
    rtol: float = RTOL
    atol: float = ATOL
    rng: random.Random | None = None


class Mismatch(PhageError):
    """A hop's output disagreed with a verifier's recomputation (carries the evidence)."""

    def __init__(self, evidence: Evidence) -> None:
        super().__init__(evidence.describe())
        self.evidence = evidence


def compare(
    got: Any, expected: Any, rtol: float = RTOL, atol: float = ATOL
) -> tuple[bool, float, float, float]:
    """(match, max |diff|, scale, tolerance) of two output tensors."""
    import torch

    a, b = got.float(), expected.float()
    if a.shape != b.shape:
        return False, float("inf"), 0.0, 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    tolerance = atol + rtol * scale
    return bool(torch.isfinite(a).all()) and diff <= tolerance, diff, scale, tolerance


class Checker:
    """Decides which steps to check and checks them; one per chain session."""

    def __init__(self, policy: CheckPolicy, dial: Dial, model: str) -> None:
        self.policy = policy
        self.dial = dial
        self.model = model
        self.rng = policy.rng or random.Random()
        self.checked = 0

    def may_check(self, node_id: str) -> bool:
        """Whether any step of ``node_id`` may be checked (its steps then go through the client)."""
        return self.policy.rate > 0 and self.policy.untrusted(node_id)

    def wants(self, node_id: str) -> bool:
        """Whether this step of ``node_id`` is to be checked."""
        return self.policy.untrusted(node_id) and self.rng.random() < self.policy.rate

    async def _recompute(self, verifier: Verifier, start: int, history: list[Any], step_input: Any) -> Any:
        import torch

        chunks = [torch.cat(history, dim=0 if start == 0 else 1)] if history else []
        chunks.append(step_input)
        frame = forward_frame(self.model, chunks, start, verifier.blocks.end)
        peer = self.dial(verifier.address, verifier.node_id)
        try:
            reply = await peer.request(frame)
        finally:
            await close_peers([peer])
        self.checked += 1
        return tensor_from_pb(reply.tensors[-1])

    def _evidence(
        self, node_id: str, witness: str, blocks: BlockRange, step: int, got: Any, want: Any
    ) -> Evidence:
        _ok, diff, scale, tolerance = compare(got, want, self.policy.rtol, self.policy.atol)
        return Evidence(node_id, witness, self.model, str(blocks), step, diff, scale, tolerance)

    async def check(
        self,
        node_id: str,
        blocks: BlockRange,
        start: int,
        history: list[Any],
        step_input: Any,
        output: Any,
        avoid: Collection[str] = (),
    ) -> None:
        """Recompute one step elsewhere; raise :class:`Mismatch` (after reporting it) when it differs.

        A disagreement with an untrusted verifier does not say who is wrong: a referee (a third
        node holding the blocks) decides, and the one it contradicts is reported. With no referee
        nobody is reported, but the hop is still left (:class:`Mismatch`), as its output is in doubt.
        """
        rtol, atol = self.policy.rtol, self.policy.atol
        avoid = {node_id, *avoid}
        verifier = await self.policy.find_verifier(blocks, start, avoid)
        if verifier is None:
            return  # nobody else holds these blocks: nothing to compare with (the coverage view shows it)
        expected = await self._recompute(verifier, start, history, step_input)
        step = len(history)
        if compare(output, expected, rtol, atol)[0]:
            return
        if not self.policy.untrusted(verifier.node_id):
            evidence = self._evidence(node_id, verifier.node_id, blocks, step, output, expected)
            await self.policy.report(evidence)
            raise Mismatch(evidence)
        referee = await self.policy.find_verifier(blocks, start, {*avoid, verifier.node_id})
        if referee is None:
            raise Mismatch(self._evidence(node_id, verifier.node_id, blocks, step, output, expected))
        ruling = await self._recompute(referee, start, history, step_input)
        if compare(output, ruling, rtol, atol)[0]:  # the verifier was the one that lied
            await self.policy.report(
                self._evidence(verifier.node_id, referee.node_id, blocks, step, expected, ruling)
            )
            return
        evidence = self._evidence(node_id, referee.node_id, blocks, step, output, ruling)
        await self.policy.report(evidence)
        raise Mismatch(evidence)
