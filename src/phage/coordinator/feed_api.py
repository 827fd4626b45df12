"""The live feed: one JSON message per task or node state change, over a WebSocket.

Browsers cannot set headers on a WebSocket, so the key may come as ``?key=``.
"""

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from phage import __version__
from phage.coordinator.core import Coordinator
from phage.errors import Unauthenticated


async def _until_closed(ws: WebSocket) -> None:
    """Return once the client disconnects; messages it sends are ignored."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


def install_feed(app: FastAPI, c: Coordinator) -> None:
    """Add ``/api/feed``."""

    @app.websocket("/api/feed")
    async def feed(ws: WebSocket) -> None:
        """Live events: one JSON message per task or node state change."""
        key = ws.query_params.get("key")
        header = ws.headers.get("authorization") or (f"Bearer {key}" if key else None)
        try:
            await c.keys.authenticate(header)
        except Unauthenticated as exc:
            await ws.close(code=4401, reason=exc.message)
            return
        await ws.accept()
        async with c.bus.subscribe() as sub:
            await ws.send_json({"type": "hello", "version": __version__})
            # Watch for the client going away (or the server stopping) even while no events come.
            gone = asyncio.ensure_future(_until_closed(ws))
            try:
                while True:
                    nxt = asyncio.ensure_future(sub.next())
                    done, _ = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if gone in done:
                        nxt.cancel()
                        return
                    await ws.send_json(nxt.result())
            except (WebSocketDisconnect, RuntimeError):
                return
            finally:
                gone.cancel()
