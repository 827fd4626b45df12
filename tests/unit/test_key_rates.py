"""Per-key sliding-window limits and the charge a metered request gets (no processes: pure logic)."""

from __future__ import annotations

import pytest

from phage.coordinator.key_rates import KeyRates, Limits
from phage.coordinator.metering import Ticket, prompt_bound
from phage.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_slide_and_say_when_to_retry() -> None:
    clock = Clock()
    rates = KeyRates(clock)
    limits = Limits(requests_per_minute=2)
    rates.admit("k", limits)
    rates.done("k", 0)
    clock.now += 10
    rates.admit("k", limits)
    rates.done("k", 0)
    with pytest.raises(RateLimited) as refused:
        rates.admit("k", limits)
    assert refused.value.retry_after_s == pytest.approx(50)
    rates.admit("other", limits)  # other keys are not affected
    clock.now += 50.01
    rates.admit("k", limits)  # the first request aged out


def test_tokens_per_minute_and_concurrency() -> None:
    clock = Clock()
    rates = KeyRates(clock)
    limits = Limits(tokens_per_minute=100, max_concurrent=1)
    rates.admit("k", limits)
    with pytest.raises(RateLimited, match="1 at once"):
        rates.admit("k", limits)
    rates.done("k", 60)
    clock.now += 5
    rates.admit("k", limits)
    rates.done("k", 60)
    with pytest.raises(RateLimited) as refused:
        rates.admit("k", limits)
    assert refused.value.retry_after_s == pytest.approx(55), "the first 60 tokens age out first"
    assert rates.in_flight("k") == 0


def _ticket(max_tokens: int = 10) -> Ticket:
    return Ticket("r", "k", "chat", "m", max_tokens, prompt_bytes=20, messages=1, started_at=0.0, node_id="n")


def test_a_finished_chat_is_charged_at_most_what_was_delivered() -> None:
    t = _ticket()
    t.delivered("one two", 2, 0.1)
    t.finished, t.reported_prompt, t.reported_completion = True, 4_000_000_000, 4_000_000_000
    prompt, completion = t.charge()
    assert completion == 8, "capped by the text delivered (7 bytes, plus the end-of-text token)"
    assert prompt == prompt_bound(20, 1)
    honest = _ticket()
    honest.delivered("one two three", 3, 0.1)
    honest.finished, honest.reported_prompt, honest.reported_completion = True, 7, 3
    assert honest.charge() == (7, 3)


def test_a_stream_cut_short_is_charged_its_chunks() -> None:
    t = _ticket(max_tokens=4)
    t.delivered("a", 1, 0.1)
    t.delivered("bcd", 3, 0.2)
    t.delivered("e", 1, 0.3)
    prompt, completion = t.charge()
    assert completion == 4, "never more than max_tokens"
    assert 0 < prompt < prompt_bound(20, 1)
    assert t.ttft_s == pytest.approx(0.1)
