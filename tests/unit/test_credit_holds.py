"""Credit holds against a real store: concurrent requests cannot spend a key's limit twice."""

from __future__ import annotations

import pytest

from phage.coordinator.keys import Principal
from phage.coordinator.metering import Meter, RateDefaults, prompt_bound, prompt_estimate
from phage.domain import Task, TaskKind, TaskSpec, TaskState
from phage.domain.generate import GenerateSpec
from phage.domain.ids import new_id
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


def _generate(replicas: int = 1, max_tokens: int = 30) -> Task:
    gen = GenerateSpec(
        prompt="x" * PROMPT_BYTES, model="m", verifier="true", n=replicas, max_tokens=max_tokens
    )
    return Task(
        id=new_id("t"),
        kind=TaskKind.GENERATE,
        state=TaskState.QUEUED,
        spec=TaskSpec(generate=gen),
        priority=0,
        max_attempts=3,
        created_at=100.0,
        updated_at=100.0,
        owner="k1",
        labels={},
        replicas=replicas,
    )


async def test_a_batch_of_generate_tasks_holds_its_worst_case_all_or_none(sql_store: SqlStore) -> None:
    meter, who = await _meter(sql_store, 300)
    worst = prompt_bound(PROMPT_BYTES, 1) + 30  # 20 + 64 + 16 template + 30 = 130 per attempt
    assert worst == 130
    # three tasks: the third finds 260 held and 40 left, more than its estimate (9): at most one crosses
    await meter.hold_tasks(who, [_generate(), _generate(), _generate()])
    with pytest.raises(PaymentRequired, match="generate tasks in flight"):
        await meter.hold_tasks(who, [_generate()])  # 390 held of 300: refused, nothing held
    with pytest.raises(PaymentRequired) as chat:
        await meter.begin(who, "chat", "m", 30, PROMPT_BYTES, 1)  # a chat sees the tasks' holds too
    assert chat.value.field == "Authorization"


async def test_a_refused_batch_holds_nothing(sql_store: SqlStore) -> None:
    meter, who = await _meter(sql_store, 200)
    with pytest.raises(PaymentRequired):
        await meter.hold_tasks(who, [_generate(replicas=2), _generate()])  # 260, then 9 more over 200
    await meter.hold_tasks(who, [_generate()])  # nothing of the refused batch was kept


async def test_a_generate_task_s_hold_ends_with_the_task(sql_store: SqlStore) -> None:
    clock = [100.0]
    await sql_store.add_api_key("k1", "hash", "spender", "user", 0.0)
    await sql_store.set_credit_limit("k1", 135)
    meter = Meter(sql_store, lambda: clock[0], RateDefaults())
    who = Principal("k1", "spender", "user", credit_limit_tokens=135)
    running, never_written = _generate(), _generate()
    await sql_store.add_tasks([running])
    await meter.hold_tasks(who, [running])  # holds 130 of 135
    with pytest.raises(PaymentRequired):
        await meter.hold_tasks(who, [never_written])  # 130 + its estimate 9 > 135
    await sql_store.cancel_task(running.id, clock[0])
    await meter.hold_tasks(who, [never_written])  # the cancelled task's hold was given back
    with pytest.raises(PaymentRequired):
        await meter.hold_tasks(who, [_generate()])  # a task not yet in the store keeps its hold at first
    clock[0] += 120  # past the grace for a submit still being written: that task never was
    await meter.hold_tasks(who, [_generate()])
