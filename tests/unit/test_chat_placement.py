"""Local-first chat placement: least busy first, then the lowest measured round trip."""

from __future__ import annotations

import asyncio

from phage.coordinator.chat import ChatRouter
from phage.protocol.v1 import phage_pb2 as pb


async def _subscribe(router: ChatRouter, node_id: str) -> asyncio.Task[None]:
    async def drain() -> None:
        async for _ in router.orders(node_id):
            pass

    task = asyncio.create_task(drain())
    await asyncio.sleep(0)
    return task


async def test_equal_load_goes_to_the_nearest_node_and_load_still_wins() -> None:
    router = ChatRouter()
    subs = [await _subscribe(router, n) for n in ("far", "near")]
    router.rtt.update({"far": 0.120, "near": 0.004})
    assert {router.pick(["far", "near"], set()) for _ in range(20)} == {"near"}
    router.open("near", "m", pb.ChatOrder())  # one chat in flight on the near node
    assert router.pick(["far", "near"], set()) == "far", "a busier node loses to an idle one"
    router.rtt.pop("far")
    assert router.pick(["far", "near"], {"near"}) == "far"
    for t in subs:
        t.cancel()
    await asyncio.gather(*subs, return_exceptions=True)
