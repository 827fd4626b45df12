"""The coordinator relay: conversations with a node that cannot accept connections.

A node behind NAT or a firewall cannot be dialled, but it already dials the coordinator for
its control plane. With ``--dataplane-relay`` it opens one more stream there
(``PhageRelay.Serve``, with the same certificate) and serves every conversation that comes
down it, exactly as its data-plane listener would; it advertises :data:`RELAY_ADDRESS`
instead of a ``host:port``. The coordinator, which drives every chain, reaches such a node
through :class:`RelayHub` — a :class:`RelayedConversation` has the same two calls as a direct
:class:`~phage.dataplane.transport.Peer` — so routing, failover and checks do not know the
difference. Node-to-node traffic a relay would need (a node driving a chain) does not exist yet.

Each frame crosses two mTLS hops (coordinator ↔ node) instead of one, and the coordinator's
bandwidth carries the node's activations: relay is for nodes that have no other way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from phage.dataplane.transport import (
    Conversation,
    Dial,
    Handler,
    RemoteConversation,
    TLSIdentity,
    answer,
    close_conversations,
    direct,
    error_frame,
    raise_for_error,
)
from phage.errors import ProtocolError, Unavailable
from phage.protocol.channels import channel_closed_under
from phage.protocol.v1 import dataplane_pb2 as dp
from phage.protocol.v1 import dataplane_pb2_grpc as dp_grpc

log = logging.getLogger("phage.dataplane")

RELAY_ADDRESS = "relay"
"""What a relayed node advertises as its data-plane address."""
RELAY_PEER = "coordinator-relay"
"""The peer name a relayed node's handlers see (the coordinator's stream, not a dialled node)."""


class _Link:
    """One node's relay stream, on the coordinator: frames waiting to go down, replies awaited."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.outbox: asyncio.Queue[dp.RelayFrame | None] = asyncio.Queue()
        self.pending: dict[tuple[str, int], asyncio.Future[dp.Frame]] = {}
        self.closed = ""
        """Why the stream ended ("" while it is open)."""

    def deliver(self, up: dp.RelayFrame) -> None:
        waiter = self.pending.pop((up.conversation, up.frame.seq), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(up.frame)

    def end(self, why: str) -> None:
        if self.closed:
            return
        self.closed = why
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(Unavailable(f"node {self.node_id}: {why}"))
        self.pending.clear()
        self.outbox.put_nowait(None)


class RelayHub:
    """The coordinator's end of every relay stream, by node id."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}

    def connected(self, node_id: str) -> bool:
        """Whether ``node_id`` has a relay stream open now."""
        return node_id in self._links

    async def serve(
        self, node_id: str, replies: AsyncIterator[dp.RelayFrame]
    ) -> AsyncIterator[dp.RelayFrame]:
        """One node's stream: yields the frames for it; ``replies`` are its answers.

        A node that opens a second stream (it reconnected) replaces the first; conversations
        on the old one fail (the chain fails over and replays, as for a node that died).
        """
        old = self._links.get(node_id)
        if old is not None:
            old.end("relay stream replaced by a newer one")
        link = self._links[node_id] = _Link(node_id)
        log.info("node %s serves its blocks through the relay", node_id[:12])

        async def read() -> None:
            try:
                async for up in replies:
                    link.deliver(up)
            except grpc.aio.AioRpcError:
                pass
            link.end("relay stream ended")

        reader = asyncio.get_running_loop().create_task(read(), name="phage-relay-read")
        try:
            while (down := await link.outbox.get()) is not None:
                yield down
        finally:
            reader.cancel()
            link.end("relay stream ended")
            if self._links.get(node_id) is link:
                del self._links[node_id]

    def conversation(self, node_id: str) -> RelayedConversation:
        """A new conversation with ``node_id`` through its relay stream."""
        return RelayedConversation(self, node_id)

    def link(self, node_id: str) -> _Link:
        """The open stream of ``node_id``, or Unavailable."""
        link = self.open_link(node_id)
        if link is None:
            raise Unavailable(f"node {node_id} has no relay stream open to the coordinator")
        return link

    def open_link(self, node_id: str) -> _Link | None:
        """The open stream of ``node_id``, if any."""
        link = self._links.get(node_id)
        return link if link is not None and not link.closed else None

    def dialler(self, identity: TLSIdentity) -> Dial:
        """Dial relayed nodes through this hub and every other node directly."""
        dial_direct = direct(identity)

        def dial(address: str, node_id: str) -> RemoteConversation:
            if address == RELAY_ADDRESS:
                return self.conversation(node_id)
            return dial_direct(address, node_id)

        return dial


class RelayedConversation:
    """A conversation with a relayed node: :class:`~phage.dataplane.transport.Peer`'s two calls."""

    def __init__(self, hub: RelayHub, node_id: str) -> None:
        self.hub = hub
        self.node_id = node_id
        self.name = uuid.uuid4().hex
        self._seq = 0
        self._started = False
        self._lock = asyncio.Lock()

    async def request(self, frame: dp.Frame, wait_s: float = 60.0) -> dp.Frame:
        """Send ``frame`` down the node's relay stream and wait for its reply."""
        async with self._lock:
            link = self.hub.link(self.node_id)
            self._seq += 1
            frame.seq = self._seq
            waiter: asyncio.Future[dp.Frame] = asyncio.get_running_loop().create_future()
            link.pending[(self.name, frame.seq)] = waiter
            self._started = True
            link.outbox.put_nowait(dp.RelayFrame(conversation=self.name, frame=frame))
            try:
                async with asyncio.timeout(wait_s):
                    reply = await waiter
            except TimeoutError:
                link.pending.pop((self.name, frame.seq), None)
                raise Unavailable(
                    f"node {self.node_id} did not answer through the relay in {wait_s:g} s"
                ) from None
        if reply.seq != frame.seq:
            raise ProtocolError(f"node {self.node_id} answered request {reply.seq}, not {frame.seq}")
        return raise_for_error(reply)

    async def close(self) -> None:
        """Tell the node the conversation ended (it drops what it kept for it)."""
        link = self.hub.open_link(self.node_id)
        if self._started and link is not None:
            link.outbox.put_nowait(dp.RelayFrame(conversation=self.name, close=True))


class RelayServer:
    """The node's end: keep a relay stream open to the coordinator and serve what comes down it."""

    def __init__(self, channel: Callable[[], grpc.aio.Channel], handlers: Mapping[str, Handler]) -> None:
        self._channel = channel
        """The node's control-plane channel now (it moves when the node moves to another replica)."""
        self.handlers = handlers

    async def run(self, retry_s: float = 1.0) -> None:
        """Serve until cancelled, opening the stream again whenever it ends."""
        while True:
            try:
                await self.serve_once()
            except asyncio.CancelledError as exc:
                if not channel_closed_under(exc):
                    raise
                log.debug("relay stream cut: the node moved to another coordinator replica")
            except grpc.aio.AioRpcError as exc:
                log.debug("relay stream ended: %s", exc.code())
            except Exception as exc:  # the channel is being replaced (reconnecting): try again
                log.debug("relay stream could not run: %r", exc)
            await asyncio.sleep(retry_s)

    async def serve_once(self) -> None:
        """One relay stream, until it ends; every conversation on it ends with it."""
        call = dp_grpc.PhageRelayStub(self._channel()).Serve()  # type: ignore[no-untyped-call]
        conversations: dict[str, tuple[dict[str, Conversation], asyncio.Lock]] = {}
        writing = asyncio.Lock()
        running: set[asyncio.Task[None]] = set()

        async def handle(name: str, frame: dp.Frame) -> None:
            open_, turn = conversations.setdefault(name, ({}, asyncio.Lock()))
            async with turn:  # one conversation's frames in order; different ones at once
                try:
                    reply = await answer(self.handlers, open_, RELAY_PEER, frame)
                except Exception as exc:  # a direct caller would see its stream break: fail over
                    log.exception("relayed frame failed")
                    reply = error_frame(frame.seq, Unavailable(f"the node failed: {exc!r}"))
            if frame.one_way:
                return
            async with writing:
                await call.write(dp.RelayFrame(conversation=name, frame=reply))

        async def end(name: str) -> None:
            open_, turn = conversations.pop(name, ({}, asyncio.Lock()))
            async with turn:
                await close_conversations(open_)

        try:
            while (down := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                job = handle(down.conversation, down.frame) if not down.close else end(down.conversation)
                task = asyncio.get_running_loop().create_task(job)
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in list(running):
                task.cancel()
            for open_, _turn in conversations.values():
                await close_conversations(open_)
            with contextlib.suppress(Exception):
                call.cancel()
