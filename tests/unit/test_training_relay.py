"""The coordinator's relay inbox: bounded, per consumer, and forgetting what a replay will resend."""

from __future__ import annotations

import asyncio

from phage.coordinator.training_relay import Frame, Inbox


def frame(seq: int, *, end: bool = False) -> Frame:
    return Frame("stem", seq, b"", end)


async def take(inbox: Inbox, generation: int = 1) -> tuple[int, bool]:
    got = await inbox.get(generation)
    assert got is not None
    return got.seq, got.end


async def test_a_put_waiting_for_room_does_not_land_after_the_batches_are_dropped() -> None:
    inbox = Inbox(capacity=2)
    await inbox.attach(1)
    await inbox.put(frame(10))
    await inbox.put(frame(11))
    late = asyncio.create_task(inbox.put(frame(12)))  # full: waits for room
    await asyncio.sleep(0)
    assert not late.done()
    await inbox.drop_batches()  # the producers restart and replay from 3, in order
    await late
    await inbox.put(frame(3))
    await inbox.put(frame(-1, end=True), force=True)
    assert [await take(inbox), await take(inbox)] == [(3, False), (-1, True)]  # 12 would overtake 3..11


async def test_dropping_keeps_end_markers_and_frees_room() -> None:
    inbox = Inbox(capacity=2)
    await inbox.attach(1)
    await inbox.put(frame(5))
    await inbox.put(frame(-1, end=True), force=True)
    await inbox.drop_batches()
    await asyncio.wait_for(inbox.put(frame(6)), 1)  # room again
    assert [await take(inbox), await take(inbox)] == [(-1, True), (6, False)]
