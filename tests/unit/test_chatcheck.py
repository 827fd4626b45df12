"""Judging a chat answer against its trusted re-scoring (``domain/chatcheck.py``): pure logic."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from phage.domain.chatcheck import GREEDY_TOLERANCE, MIN_LOGPROB, Exchange, Scores, judge

EOS = 2
IDS = (11, 12, 13, EOS)


GREEDY = Exchange(IDS, "a b c", "stop", max_tokens=16, temperature=0.0, has_stops=False)
"""A greedy answer of three tokens and end-of-text."""


def _exchange(**over: Any) -> Exchange:
    return replace(GREEDY, **over)


def _scores(n: int = len(IDS), **over: Any) -> Scores:
    """A re-scoring in which every token is the model's first choice and a typical draw."""
    honest = Scores((0.0,) * n, (-1.0,) * n, (1.0,) * n, (0.5,) * n, "a b c", EOS)
    return replace(honest, **over)


def test_greedy_tokens_must_be_the_first_choice_up_to_the_tolerance() -> None:
    assert judge(_exchange(), _scores()).passed
    near = (
        0.0,
        GREEDY_TOLERANCE * 0.9,
        0.0,
        0.01,
    )  # cached decode vs one full pass: numerics differ a little
    assert judge(_exchange(), _scores(greedy_gap=near)).passed
    off = (0.0, 0.0, 0.7, 0.0)
    verdict = judge(_exchange(), _scores(greedy_gap=off))
    assert not verdict.passed
    assert (
        verdict.reason
        == "greedy token 2 (id 13) is not the model's first choice (its logit is 0.700 below the top)"
    )
    assert judge(_exchange(), _scores(greedy_gap=off), tolerance=1.0).passed, "the tolerance is the caller's"


def test_sampled_tokens_need_not_be_greedy_but_must_be_plausible() -> None:
    sampled = _exchange(temperature=0.8)
    second_choices = _scores(greedy_gap=(1.5, 0.0, 2.0, 0.0))  # honest sampling often takes a second choice
    verdict = judge(sampled, second_choices)
    assert verdict.passed and verdict.z == pytest.approx(0.0), "logprob + entropy sums to 0: a typical draw"
    for impossible in (-math.inf, math.nan, MIN_LOGPROB - 1):  # outside top-p, garbage, implausible
        lp = (-1.0, impossible, -1.0, -1.0)
        bad = judge(sampled, _scores(logprob=lp))
        assert not bad.passed and bad.reason == (
            "sampled token 1 (id 12) is impossible under the request's sampling"
        ), bad


def test_a_sampled_answer_far_less_likely_than_honest_sampling_fails_with_its_z_score() -> None:
    n = 40
    ids = (*range(100, 100 + n - 1), EOS)
    sampled = _exchange(token_ids=ids, temperature=0.8)
    # each token 2 nats less likely than the model's average: z = -2n / sqrt(0.5 n) ≈ -17.9
    other_model = _scores(n, logprob=(-3.0,) * n)
    verdict = judge(sampled, other_model)
    assert not verdict.passed and verdict.z is not None and verdict.z < -6
    assert (
        verdict.reason
        == f"the answer's likelihood is {-verdict.z:.1f} standard deviations below what this model samples"
    )
    # a little unlucky is not evidence
    assert judge(sampled, _scores(n, logprob=(-1.2,) * n)).passed


def test_the_answer_must_have_the_shape_it_claims() -> None:
    padded = judge(_exchange(text="a b c and more"), _scores())
    assert not padded.passed and "text was added or changed" in padded.reason
    # a stop string cuts the text the node decoded: a prefix of the decoded tokens is fine then
    assert judge(_exchange(text="a b", has_stops=True), _scores()).passed
    short = judge(_exchange(finish_reason="length", max_tokens=10), _scores())
    assert not short.passed and short.reason == "claims it reached max_tokens (10) after 4 tokens"
    truncated = judge(_exchange(token_ids=(11, 12, 13, 14)), _scores())
    assert not truncated.passed and "does not end with end-of-text (truncated)" in truncated.reason
    assert judge(_exchange(token_ids=()), _scores(0)).reason == "the node sent no token ids for its answer"
    partial = judge(_exchange(), _scores(3))
    assert not partial.passed and partial.reason == "the re-scoring covers 3 of the answer's 4 tokens"
