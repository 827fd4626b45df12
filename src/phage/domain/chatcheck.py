"""Judging a chat answer against a trusted re-scoring of it (checked chat).

A node in an open pool can claim a model and answer from another (or from nothing).
Batch results are checked by re-running their verifier; a chat answer is checked by
*teacher forcing*: a trusted node serving the same model runs one forward pass over
prompt + the answer's token ids and reports, for every answer token, how the model
rated it. This module turns that into a verdict, with the request's sampling settings:

- **greedy** (temperature 0): every token must be the model's first choice, up to a
  small logit tolerance (numerics differ a little between a cached decode and one
  full pass, and between GPUs);
- **sampled**: every token must be possible under the requested temperature and top-p
  (inside the nucleus), and the answer's total log-likelihood must be within a
  calibrated bound of what honest sampling gives: the sum over tokens of
  ``logprob + entropy`` has mean 0 and variance ``Σ variance`` for an honest sampler,
  so its z-score is N(0, 1)-like; a different model's tokens drive it far below;
- **shape**: the text must be what the token ids decode to (no padding, no edits), a
  ``length`` finish must have ``max_tokens`` tokens, and a ``stop`` finish without stop
  strings must end with the end-of-text token, which must itself pass the checks above
  (no truncated answers passed off as complete).

Sampled checks are statistical: a model whose distribution is nearly flat cannot be told
from another by a few tokens. Greedy checks are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GREEDY_TOLERANCE = 0.05
"""Largest gap (in logits) between the model's first choice and a greedy token that still passes."""
Z_MAX = 6.0
"""A sampled answer fails when its likelihood is this many standard deviations below honest sampling's."""
MIN_LOGPROB = -30.0
"""A sampled token less likely than this (in nats) was not sampled from the model (outside top-p: -inf)."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the checked node answered, and what it was asked."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    max_tokens: int
    temperature: float
    has_stops: bool


@dataclass(frozen=True, slots=True)
class Scores:
    """The trusted re-scoring: one entry per answer token."""

    greedy_gap: tuple[float, ...]
    logprob: tuple[float, ...]
    entropy: tuple[float, ...]
    variance: tuple[float, ...]
    decoded: str
    eos_token_id: int | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """``passed``, or the evidence against the answer."""

    passed: bool
    reason: str = ""
    z: float | None = None
    """Sampled answers: the likelihood's z-score."""


def judge(ex: Exchange, sc: Scores, *, tolerance: float = GREEDY_TOLERANCE, z_max: float = Z_MAX) -> Verdict:
    """Check an answer against its re-scoring; the reason names the first thing that is wrong."""
    n = len(ex.token_ids)
    if n == 0:
        return Verdict(False, "the node sent no token ids for its answer")
    if not (len(sc.greedy_gap) == len(sc.logprob) == len(sc.entropy) == len(sc.variance) == n):
        return Verdict(False, f"the re-scoring covers {len(sc.logprob)} of the answer's {n} tokens")
    if ex.text != sc.decoded and not (ex.has_stops and sc.decoded.startswith(ex.text)):
        return Verdict(
            False,
            f"the answer's text ({len(ex.text)} characters) is not what its {n} token ids decode to "
            f"({len(sc.decoded)} characters): text was added or changed",
        )
    if ex.finish_reason == "length" and n != ex.max_tokens:
        return Verdict(False, f"claims it reached max_tokens ({ex.max_tokens}) after {n} tokens")
    if (
        ex.finish_reason == "stop"
        and not ex.has_stops
        and sc.eos_token_id is not None
        and ex.token_ids[-1] != sc.eos_token_id
    ):
        return Verdict(
            False, "claims the model stopped, but the answer does not end with end-of-text (truncated)"
        )
    if ex.temperature <= 0:
        for i, gap in enumerate(sc.greedy_gap):
            if gap > tolerance:
                return Verdict(
                    False,
                    f"greedy token {i} (id {ex.token_ids[i]}) is not the model's first choice "
                    f"(its logit is {gap:.3f} below the top)",
                )
        return Verdict(True)
    for i, lp in enumerate(sc.logprob):
        if not lp >= MIN_LOGPROB:  # also catches NaN and -inf (outside top-p)
            return Verdict(
                False, f"sampled token {i} (id {ex.token_ids[i]}) is impossible under the request's sampling"
            )
    total = sum(lp + h for lp, h in zip(sc.logprob, sc.entropy, strict=True))
    spread = math.sqrt(max(sum(sc.variance), 1e-9))
    z = total / spread
    if z < -z_max:
        return Verdict(
            False,
            f"the answer's likelihood is {-z:.1f} standard deviations below what this model samples",
            z,
        )
    return Verdict(True, z=z)
