"""Limits on what an HTTP peer can hold before it has said who it is.

uvicorn's httptools protocol keeps every byte of an unfinished request head and sets no
deadline on it: a peer that sends headers and never the blank line that ends them holds that
memory for as long as it keeps the socket open. :func:`guarded_protocol` returns a subclass that

* counts the bytes of each request head and answers ``431`` and closes past ``max_header_bytes``;
* closes a connection whose request head is not complete ``header_timeout_s`` after it began
  (or after connecting: a socket that never sends a byte is closed too);
* closes new connections at once while ``max_connections`` are open.

Together these bound what unauthenticated peers can hold to about
``max_connections × max_header_bytes``, for at most ``header_timeout_s`` each. Bodies are
bounded separately, per route (``read_body``, the multipart reader).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("phage.http")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP connection may hold before its request head is complete."""

    max_header_bytes: int
    """Bytes of request line plus headers."""
    header_timeout_s: float
    """Seconds from a request's first byte (or the connection's start) to its blank line."""
    max_connections: int
    """Connections open at once, all peers together."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline on every request head."""

    limits: HttpLimits
    refused_heads = 0
    """Heads refused as too large or too slow (process-wide, for tests and metrics)."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _in_head = False
    _tail = b""
    """The last bytes of an unfinished head, to find a blank line split across two reads."""
    """Between a request's first byte and the blank line that ends its head (the parser says)."""
    _in_message = False
    """Between a request's first byte and the end of its body."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Take the connection, or close it at once when too many are open."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("HTTP connection from %s closed: %d open", self.client, len(self.connections))
            transport.close()
            return
        self._arm()  # the first request head must come, and finish, in time

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Refuse a request head past the limit before the parser buffers it; else feed the parser.

        Only head bytes count: in a chunk that ends the head, the bytes after its blank line are
        body (or the next request), which the routes' own limits govern.
        """
        idle = not self._in_message and (self.cycle is None or self.cycle.response_complete)
        if idle and self._head_timer is None:
            self._arm()  # bytes on an idle keep-alive connection: a head must follow in time
        if idle or self._in_head:
            before = self._head_bytes if self._in_head else 0
            tail = self._tail if self._in_head else b""
            end = (tail + data).find(b"\r\n\r\n")
            head_part = len(data) if end < 0 else max(0, end + 4 - len(tail))
            if before + head_part > self.limits.max_header_bytes:
                self._refuse_head(431, "Request Header Fields Too Large")
                return
        super().data_received(data)
        if self._in_head:  # the head is still unfinished after this chunk
            self._head_bytes += len(data)
            self._tail = data[-3:]

    def on_message_begin(self) -> None:
        """A new request: its head gets a fresh byte count and deadline."""
        super().on_message_begin()
        self._in_head = self._in_message = True
        self._head_bytes, self._tail = 0, b""
        self._arm()

    def on_headers_complete(self) -> None:
        """The head is whole: from here the route's own body limits apply."""
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The body is whole too; the next bytes begin another request."""
        self._in_message = False
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse_head(408, "Request Timeout")

    def _refuse_head(self, status: int, reason: str) -> None:
        self._disarm()
        self._in_head = False
        type(self).refused_heads += 1
        if self.transport.is_closing():
            return
        log.info("HTTP request head from %s refused: %d %s", self.client, status, reason)
        body = f"{reason}\n".encode()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=…)`` that enforces ``limits``."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})
