"""The live event feed: fan-out, and a subscriber that falls behind is told it lagged."""

from __future__ import annotations

import asyncio

from phage.coordinator.feed import EventBus


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    async with bus.subscribe() as one, bus.subscribe() as two:
        bus.task("t-1", "queued", kind="job")
        bus.node("n-1", "online")
        bus.task("t-1", "verified")
        for sub in (one, two):
            got = [await sub.next() for _ in range(3)]
            assert [(e["type"], e["id"], e["state"]) for e in got] == [
                ("task", "t-1", "queued"),
                ("node", "n-1", "online"),
                ("task", "t-1", "verified"),
            ]
            assert got[0]["kind"] == "job"
            assert all(isinstance(e["ts"], float) for e in got)


async def test_lagged_subscriber_gets_a_notice_then_the_newest_events() -> None:
    bus = EventBus(queue_size=3)
    async with bus.subscribe() as slow, bus.subscribe() as fast:
        for i in range(10):
            bus.task(f"t-{i}", "queued")
            if i < 3:
                assert (await fast.next())["id"] == f"t-{i}"
        notice = await slow.next()
        assert notice["type"] == "lagged"
        assert notice["dropped"] == 7
        assert isinstance(notice["ts"], float)
        assert [(await slow.next())["id"] for _ in range(3)] == ["t-7", "t-8", "t-9"]

        # the notice comes once; after catching up the subscriber just gets new events
        bus.task("t-10", "queued")
        assert (await slow.next())["id"] == "t-10"

        # the fast one stopped reading after t-2: of t-3..t-10 it kept the newest 3
        notice = await fast.next()
        assert (notice["type"], notice["dropped"]) == ("lagged", 5)
        assert [(await fast.next())["id"] for _ in range(3)] == ["t-8", "t-9", "t-10"]


async def test_publishing_never_blocks_on_a_full_subscriber() -> None:
    bus = EventBus(queue_size=1)
    async with bus.subscribe() as sub:
        for i in range(1000):
            bus.task(f"t-{i}", "queued")  # synchronous: returns although nobody reads
        assert bus.published == 1000
        assert sub.queue.qsize() == 1
        notice = await sub.next()
        assert (notice["type"], notice["dropped"]) == ("lagged", 999)
        assert (await sub.next())["id"] == "t-999"


async def test_subscription_ends_with_its_block() -> None:
    bus = EventBus()
    assert not bus.has_subscribers
    async with bus.subscribe() as old:
        assert bus.has_subscribers
    assert not bus.has_subscribers
    bus.task("t-unseen", "queued")
    assert old.queue.empty()  # the old subscription no longer receives
    async with bus.subscribe() as new:
        bus.task("t-seen", "queued")
        assert (await new.next())["id"] == "t-seen"  # nothing from before it subscribed


async def test_next_waits_for_an_event() -> None:
    bus = EventBus()
    async with bus.subscribe() as sub:
        waiter = asyncio.create_task(sub.next())
        await asyncio.sleep(0)
        assert not waiter.done()
        bus.node("n-1", "dead")
        event = await asyncio.wait_for(waiter, 5)
        assert (event["type"], event["state"]) == ("node", "dead")
