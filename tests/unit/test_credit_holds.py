"""Credit holds against a real store: concurrent requests cannot spend a key's limit twice."""

from __future__ import annotations

import pytest

from phage.coordinator.keys import Principal
from phage.coordinator.metering import Meter, RateDefaults, prompt_estimate
from phage.errors import PaymentRequired
from phage.store import SqlStore

PROMPT_BYTES = 20
"""A 20-byte, one-message prompt: estimated at 9 tokens."""


async def _meter(sql_store: SqlStore, limit: int) -> tuple[Meter, Principal]:
    await sql_store.add_api_key("k1", "hash", "spender", "user", 0.0)
    await sql_store.set_credit_limit("k1", limit)
    meter = Meter(sql_store, lambda: 100.0, RateDefaults())
    return meter, Principal("k1", "spender", "user", credit_limit_tokens=limit)


async def _serve(meter: Meter, who: Principal, prompt: int, completion: int, max_tokens: int = 30) -> None:
    ticket = await meter.begin(who, "chat", "m", max_tokens, PROMPT_BYTES, 1)
    ticket.node_id, ticket.finished = "n1", True
    ticket.reported_prompt, ticket.reported_completion = prompt, completion
    ticket.text_bytes = 10 * completion
    task = meter.finish(ticket)
    assert task is not None
    await task


async def test_one_request_at_most_crosses_the_limit(sql_store: SqlStore) -> None:
    meter, who = await _meter(sql_store, 50)
    assert prompt_estimate(PROMPT_BYTES, 1) == 9
    first = await meter.begin(who, "chat", "m", 30, PROMPT_BYTES, 1)
    with pytest.raises(PaymentRequired, match="requests in flight"):
        await meter.begin(who, "chat", "m", 30, PROMPT_BYTES, 1)  # the first one holds the credit
    first.node_id, first.finished, first.text_bytes = "n1", True, 300
    first.reported_prompt, first.reported_completion = 5, 30
    settled = meter.finish(first)
    assert settled is not None
    await settled
    await _serve(meter, who, 5, 30)  # 15 left covers the prompt's estimate: admitted, crosses the limit
    assert await sql_store.tokens_used("k1") == 70, "50 + at most max_tokens (30)"
    with pytest.raises(PaymentRequired) as spent:
        await meter.begin(who, "chat", "m", 1, 1, 1)
    assert "70 of its 50 tokens" in spent.value.message and spent.value.field == "Authorization"


async def test_credit_left_must_cover_the_prompt_estimate(sql_store: SqlStore) -> None:
    meter, who = await _meter(sql_store, 50)
    await _serve(meter, who, 20, 22)  # 42 used, 8 left
    with pytest.raises(PaymentRequired, match="8 left, and this request's prompt needs about 9"):
        await meter.begin(who, "chat", "m", 30, PROMPT_BYTES, 1)
    small = await meter.begin(who, "chat", "m", 30, 8, 1)  # a shorter prompt (estimate 6) still fits
    assert small.hold_id is not None
