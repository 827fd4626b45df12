"""Routing chat requests to nodes and carrying their tokens back.

Chat is interactive, so it never enters the batch queue: a request picks a live
node that serves the model (the least busy with chat), the order goes straight
down that node's ``ChatOrders`` stream, and the node answers on a ``ChatStream``
call of its own. Each request has a small bounded buffer between that call and
the HTTP response: when the client reads slowly the buffer fills, the gRPC
handler stops reading, HTTP/2 flow control stops the node's writes, and the
engine waits — backpressure from the client to the GPU.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from phage.errors import InvalidInput, ProtocolError, Unavailable
from phage.protocol.v1 import phage_pb2 as pb

BUFFER_CHUNKS = 32
RTT_WEIGHT = 0.2
"""Weight of the newest round-trip sample in a node's moving average."""
"""Chunks buffered per request between the node's stream and the HTTP client."""


@dataclass(eq=False)
class ChatCall:
    """One chat request in flight on one node."""

    request_id: str
    node_id: str
    model: str
    chunks: asyncio.Queue[pb.ChatChunk | Unavailable] = field(
        default_factory=lambda: asyncio.Queue(BUFFER_CHUNKS)
    )
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    """No more chunks will be taken (completed, failed or closed)."""
    completed: bool = False
    """The node sent its final chunk (or its error): nothing to cancel there."""
    handler: asyncio.Task[Any] | None = None
    """The ChatStream handler feeding this call; cancelled to end the node's call."""
    taken: int = 0
    """Chunks with text taken off the buffer (what metering counts as delivered tokens)."""
    sent_at: float | None = None
    """When the order went out, for a round-trip measurement (None: do not measure this call)."""

    def fail(self, message: str) -> None:
        """End the call with an error the HTTP side reports (or retries on)."""
        if self.finished:
            return
        self.finished = True
        self.opened.set()  # a waiter for the node's first chunk must not sit out the open timeout
        # The buffer may be full of tokens nobody will read; make room for the error.
        while self.chunks.full():
            self.chunks.get_nowait()
        self.chunks.put_nowait(Unavailable(message))

    async def deltas(self, open_timeout: float) -> AsyncIterator[pb.ChatChunk]:
        """The node's chunks, ending after the final one; raises Unavailable on failure."""
        try:
            await asyncio.wait_for(self.opened.wait(), open_timeout)
        except TimeoutError:
            self.fail(f"node {self.node_id[:12]}… did not start the chat within {open_timeout:.0f} s")
        while True:
            item: pb.ChatChunk | Unavailable | None = await self.chunks.get()
            # Tokens that queued up while the client was busy go out as one piece: fewer, larger
            # SSE events under load, and no added wait when the stream is idle.
            texts: list[str] = []
            while isinstance(item, pb.ChatChunk) and not item.error and not item.finish_reason:
                texts.append(item.text)
                self.taken += bool(item.text)
                item = self.chunks.get_nowait() if not self.chunks.empty() else None
            if isinstance(item, pb.ChatChunk) and item.finish_reason and not item.error:
                self.taken += bool(item.text)
            if texts:
                if isinstance(item, pb.ChatChunk) and item.finish_reason and not item.error:
                    final = pb.ChatChunk()
                    final.CopyFrom(item)
                    final.text = "".join(texts) + item.text
                    yield final
                    return
                yield pb.ChatChunk(request_id=self.request_id, text="".join(texts))
            if item is None:
                continue
            if isinstance(item, Unavailable):
                raise item
            if item.error:
                if item.error_code == InvalidInput.grpc_code:  # the request itself: no node would serve it
                    raise InvalidInput(item.error, field="messages")
                raise Unavailable(f"node {self.node_id[:12]}… could not serve the chat: {item.error}")
            yield item
            if item.finish_reason:
                return


class ChatRouter:
    """Order outboxes per subscribed node and the chat calls in flight."""

    def __init__(self) -> None:
        self._outboxes: dict[str, asyncio.Queue[pb.ChatOrder]] = {}
        self.calls: dict[str, ChatCall] = {}
        self._ids = itertools.count(1)
        self._prefix = f"chat-{random.getrandbits(32):08x}-"
        self.rtt: dict[str, float] = {}
        """Per node: a moving average of the time from sending an order to the node's stream opening."""

    def _measured(self, node_id: str, seconds: float) -> None:
        old = self.rtt.get(node_id)
        self.rtt[node_id] = seconds if old is None else old + RTT_WEIGHT * (seconds - old)

    # ---- node side ---------------------------------------------------------

    async def orders(self, node_id: str) -> AsyncIterator[pb.ChatOrder]:
        """The order stream of one node (its ChatOrders RPC); a reconnect replaces the old stream."""
        outbox: asyncio.Queue[pb.ChatOrder] = asyncio.Queue()
        self._outboxes[node_id] = outbox
        try:
            while True:
                yield await outbox.get()
        finally:
            if self._outboxes.get(node_id) is outbox:
                del self._outboxes[node_id]
                self.node_lost(node_id, "the node's chat stream closed", unopened_only=True)

    async def receive(self, node_id: str, chunks: AsyncIterator[pb.ChatChunk]) -> bool:
        """Feed one ChatStream call into its request; returns True if the coordinator stopped listening.

        Runs as the call's handler task: :meth:`close` cancels that task when the
        client leaves, which ends the call and so the node's generation.
        """
        first = await anext(chunks, None)
        if first is None:
            return False
        call = self.calls.get(first.request_id)
        if call is None or call.finished:
            return True  # cancelled or unknown: tell the node to stop
        if call.node_id != node_id:
            raise ProtocolError("chat stream for a request assigned to another node")
        call.opened.set()
        if call.sent_at is not None:
            self._measured(node_id, time.monotonic() - call.sent_at)
        call.handler = asyncio.current_task()
        try:
            async for chunk in chunks:
                await call.chunks.put(chunk)  # bounded: a slow client slows this read, and so the node
                if chunk.finish_reason or chunk.error:
                    call.finished = call.completed = True
                    return False
            call.fail(f"node {node_id[:12]}… lost the chat stream before it finished")
            return False
        finally:
            call.handler = None
            if not call.finished:
                # The call broke (the node died or its connection dropped: gRPC cancels this handler).
                call.fail(f"node {node_id[:12]}… lost the chat stream")

    def node_lost(self, node_id: str, reason: str, *, unopened_only: bool = False) -> None:
        """Fail the node's calls (it died, or its order stream went away)."""
        for call in list(self.calls.values()):
            if call.node_id == node_id and not (unopened_only and call.opened.is_set()):
                call.fail(f"node {node_id[:12]}… {reason}")

    # ---- client side -------------------------------------------------------

    def subscribed(self) -> set[str]:
        """Nodes with an open order stream."""
        return set(self._outboxes)

    def active_on(self, node_id: str) -> int:
        """Chats in flight on a node."""
        return sum(1 for c in self.calls.values() if c.node_id == node_id and not c.finished)

    def pick(self, candidates: Iterable[str], exclude: set[str]) -> str:
        """The subscribed candidate with the fewest chats in flight; among equals, the nearest.

        Nearest is the lowest measured round trip (local-first: a node on the
        coordinator's LAN answers before one across the world); a node not measured yet
        counts as nearest, so every node gets measured. Ties left are broken at random.
        """
        ready = [n for n in candidates if n in self._outboxes and n not in exclude]
        if not ready:
            raise Unavailable("no live node can take this chat now", field="model")
        random.shuffle(ready)
        return min(ready, key=lambda n: (self.active_on(n), round(self.rtt.get(n, 0.0), 3)))

    def open(self, node_id: str, model: str, order: pb.ChatOrder) -> ChatCall:
        """Send an order to a node and track its call."""
        outbox = self._outboxes.get(node_id)
        if outbox is None:
            raise Unavailable("the chosen node has no chat stream open", field="model")
        rid = self._prefix + str(next(self._ids))
        call = ChatCall(rid, node_id, model)
        if not order.check:  # a check order scores before it opens: no round trip to learn from
            call.sent_at = time.monotonic()
        self.calls[rid] = call
        order.request_id = rid
        order.model = model
        outbox.put_nowait(order)
        return call

    def close(self, call: ChatCall) -> None:
        """Forget a call; unless it completed, end its node-side call and cancel the order."""
        self.calls.pop(call.request_id, None)
        call.finished = True
        if call.handler is not None:  # still feeding (a failed or abandoned call): end it
            call.handler.cancel()
        if not call.completed:
            outbox = self._outboxes.get(call.node_id)
            if outbox is not None:
                outbox.put_nowait(pb.ChatOrder(request_id=call.request_id, cancel=True))
