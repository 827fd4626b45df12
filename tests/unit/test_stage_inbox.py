"""The inbox where a chain node's pushed inputs wait for their steps: order, who may feed, bounds."""

from __future__ import annotations

import asyncio

import pytest

from phage.errors import Conflict, InputMissing, PermissionDenied
from phage.node.stage_inbox import Inbox


async def test_an_input_pushed_before_or_after_its_request_reaches_it() -> None:
    inbox = Inbox()
    inbox.deliver("n1", "client", "s", 0, "early")
    assert await inbox.take("client", "s", 0, "n1") == "early"
    waiting = asyncio.ensure_future(inbox.take("client", "s", 1, "n1"))
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.deliver("n1", "client", "s", 1, "late")
    assert await waiting == "late"
    assert len(inbox) == 0  # claimed inputs are not kept


async def test_only_the_named_node_or_the_client_may_feed_a_step() -> None:
    inbox = Inbox()
    inbox.deliver("stranger", "client", "s", 0, "forged")
    with pytest.raises(PermissionDenied, match="came from node stranger, not from node n1"):
        await inbox.take("client", "s", 0, "n1")
    inbox.deliver("client", "client", "s", 1, "from the client")  # a push that failed, fed by its caller
    assert await inbox.take("client", "s", 1, "n1") == "from the client"
    # Another client's session with the same id is another slot.
    inbox.deliver("n1", "other", "s", 2, "theirs")
    with pytest.raises(InputMissing):
        await inbox.take("client", "s", 2, "n1", wait_s=0.05)


async def test_a_step_that_is_never_fed_ends_with_the_node_and_step_named() -> None:
    with pytest.raises(InputMissing, match=r"node n1 did not hand over the input of step 7 within 0\.05 s"):
        await Inbox().take("client", "s", 7, "n1", wait_s=0.05)


async def test_a_step_is_fed_once() -> None:
    inbox = Inbox()
    inbox.deliver("n1", "client", "s", 0, "a")
    with pytest.raises(Conflict, match="step 0 of session s already has its input"):
        inbox.deliver("n1", "client", "s", 0, "b")


async def test_unclaimed_inputs_are_bounded_oldest_first_and_dropped_with_their_session() -> None:
    inbox = Inbox(limit=2)
    inbox.deliver("n1", "gone", "s", 0, "old")
    inbox.deliver("n1", "client", "s", 0, "kept")
    inbox.deliver("n1", "client", "s", 1, "new")  # evicts the oldest unclaimed input
    assert len(inbox) == 2
    with pytest.raises(InputMissing):
        await inbox.take("gone", "s", 0, "n1", wait_s=0.01)
    inbox.drop("client", "s")
    assert len(inbox) == 0
    # Requests awaiting their inputs are never evicted: a full inbox of them refuses more, and
    # says so as a missing input (the caller then drives the step itself, blaming nobody).
    waits = [asyncio.ensure_future(inbox.take("client", "w", i, "n1")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(InputMissing, match="already holds 2 requests awaiting their inputs"):
        inbox.deliver("n1", "client", "w", 5, "no room")
    inbox.drop("client", "w")  # a closing conversation leaves requests still waiting alone
    for i in range(2):
        inbox.deliver("n1", "client", "w", i, i)
    assert await asyncio.gather(*waits) == [0, 1]


async def test_one_pool_member_cannot_fill_a_nodes_inbox() -> None:
    inbox = Inbox(limit=100, per_pusher=3)
    for step in range(3):
        inbox.deliver("noisy", "victim", "s", step, "junk")
    with pytest.raises(InputMissing, match="node noisy already has 3 inputs unclaimed here"):
        inbox.deliver("noisy", "victim", "s", 3, "junk")
    inbox.deliver("n1", "client", "s", 0, "real")  # others still get through
    assert await inbox.take("client", "s", 0, "n1") == "real"
    inbox.drop("victim", "s")  # its unclaimed inputs go with the session, and so does the quota
    inbox.deliver("noisy", "victim", "s", 4, "again")


async def test_an_input_nobody_claims_expires_and_frees_its_pushers_quota() -> None:
    # A push that lands after its session's conversation ended (a ring stopped early) is
    # never claimed; it must not count against its pusher for ever.
    inbox = Inbox(per_pusher=2, keep_s=0.05)
    inbox.deliver("n1", "client", "ended", 8, "stray")
    inbox.deliver("n1", "client", "ended", 9, "stray")
    with pytest.raises(InputMissing, match="node n1 already has 2 inputs unclaimed here"):
        inbox.deliver("n1", "client", "live", 0, "wanted")
    await asyncio.sleep(0.06)
    inbox.deliver("n1", "client", "live", 0, "wanted")  # the stray ones expired to make room
    assert len(inbox) == 1
    assert await inbox.take("client", "live", 0, "n1") == "wanted"
