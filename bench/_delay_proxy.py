"""A TCP relay that holds every byte for a while each way: a caller far from its nodes.

``pipeline.py`` puts one in front of each stage server for the chain's driver only (the
nodes still reach each other directly), to show what the driver's distance costs a chain
it drives step by step and one that decodes on its own.
"""

from __future__ import annotations

import asyncio
import contextlib


class DelayProxy:
    """Listens on loopback and relays to ``target`` (``host:port``), adding ``delay_s`` each way."""

    def __init__(self, target: str, delay_s: float) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.delay_s = delay_s
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen; the address to dial instead of the target."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.get_running_loop().create_task(self._pump(src, dst))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(1 << 16):
                loop.call_at(loop.time() + self.delay_s, dst.write, data)  # in order: times only grow
        loop.call_at(loop.time() + self.delay_s, dst.close)

    async def stop(self) -> None:
        """Stop listening and relaying."""
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
