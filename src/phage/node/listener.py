"""A node's data-plane endpoint: one listener for every service other nodes reach on this node.

Sharded models' stages (``stage``) and training's activation frames (``train``)
share it, so a node opens one port whatever it does. Services are added as the
node takes up work (training's arrives once torch is imported), which is why the
listener serves a mapping it keeps filling rather than a fixed set. A node started
with ``--dataplane-relay`` listens for nothing: its stages are served through the
coordinator's relay stream instead, and its VNodes' frames go through the
coordinator's training relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from phage.dataplane import DataPlaneServer, Handler, TLSIdentity
from phage.dataplane.relay import RELAY_ADDRESS, RelayServer
from phage.dataplane.transport import Peer
from phage.errors import Unavailable

log = logging.getLogger("phage.node.listener")


class NodeListener:
    """Where peers reach this node: a data-plane server, or (``relay``) the coordinator's relay."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, advertise: str = "", relay: bool = False):
        self.host = host
        self.port = port
        self.advertise = advertise
        self.relay = relay
        self.handlers: dict[str, Handler] = {}
        """The services peers may use, by name; filled as the node takes up work."""
        self._server: DataPlaneServer | None = None
        self._relaying: asyncio.Task[None] | None = None
        self._identity: TLSIdentity | None = None

    async def start(self, identity: TLSIdentity, channel: Callable[[], grpc.aio.Channel]) -> None:
        """Listen with this node's pool certificate, or open the relay stream on ``channel``."""
        self._identity = identity
        if self.relay:
            relay = RelayServer(channel, self.handlers)
            self._relaying = asyncio.get_running_loop().create_task(relay.run(), name="phage-node-relay")
            log.info("serving peers through the coordinator's relay")
            return
        self._server = DataPlaneServer(identity, self.handlers, host=self.host, port=self.port)
        self.port = await self._server.start()
        log.info("data plane listening for peers on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening (open conversations end)."""
        if self._relaying is not None:
            self._relaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relaying
        if self._server is not None:
            await self._server.stop(0)

    def dial(self, address: str, node_id: str) -> Peer:
        """A conversation with another node, over mutual TLS as this node (a chain's next node)."""
        if self._identity is None:
            raise Unavailable("this node's data plane has not started")
        return Peer(self._identity, address, node_id)

    @property
    def address(self) -> str:
        """What peers are told to dial (``relay``: the coordinator relays)."""
        return RELAY_ADDRESS if self.relay else f"{self.advertise or self.host}:{self.port}"

    @property
    def direct(self) -> str:
        """The address peers can dial directly; "" when this node is reached only through a relay."""
        return "" if self.relay else self.address
