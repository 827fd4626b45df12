"""Inputs one stage hands straight to the next, waiting here for the step that uses them.

Driven by its client alone, a step through a chain of N nodes has 2N messages on its
path: client → node → client for every node. When the nodes of a chain can reach each
other, each node instead sends its output straight to the next node (as Petals' servers
can), while still answering its client with that output for the session's record, which
failover replays: N + 1 messages on the step's path.

The receiving node's client names, with each step, the node that is to feed it. A pushed
input waits in the inbox until that step's request arrives (or the request waits for the
input), and is handed over only if it came from that node or from the client itself (which
feeds the step when a push fails): another node of the pool cannot slip inputs into a
session. What nobody claims is bounded and dropped oldest first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from phage.errors import Conflict, InputMissing, PermissionDenied

INBOX_LIMIT = 1024
"""Pushed inputs and requests awaiting theirs held at once by one node."""
PER_PUSHER = 64
"""Unclaimed inputs one pushing node may have waiting here (a pool member cannot fill the inbox)."""
PUSH_WAIT_S = 30.0
"""How long a request waits for its pushed input: under the caller's own wait for the request
(60 s), so the caller hears that the input never came rather than that this node failed."""


_Key = tuple[str, str, int]
"""(client node id, the client's session id, step)."""


class Inbox:
    """Pushed inputs of every session on this node, by (client, session, step)."""

    def __init__(
        self, limit: int = INBOX_LIMIT, per_pusher: int = PER_PUSHER, keep_s: float = PUSH_WAIT_S
    ) -> None:
        self.limit = limit
        self.per_pusher = per_pusher
        self.keep_s = keep_s
        """How long an unclaimed input is kept: a push that lands after its session ended goes then."""
        self._slots: dict[_Key, asyncio.Future[tuple[str, Any]]] = {}
        self._unclaimed: dict[str, int] = {}
        """Inputs waiting here by the node that pushed them."""
        self._arrived: dict[_Key, float] = {}
        """When each unclaimed input arrived."""

    def __len__(self) -> int:
        return len(self._slots)

    def _slot(self, key: _Key) -> asyncio.Future[tuple[str, Any]]:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self.limit:
                self._evict()
            slot = self._slots[key] = asyncio.get_running_loop().create_future()
        return slot

    def _evict(self) -> None:
        """Make room by dropping the oldest unclaimed input (never a request's wait)."""
        for key, slot in self._slots.items():
            if slot.done():
                self._forget(key)
                return
        raise InputMissing(f"this node already holds {self.limit} requests awaiting their inputs")

    def _expire(self) -> None:
        """Drop unclaimed inputs older than ``keep_s``: no request will come for them now."""
        cutoff = time.monotonic() - self.keep_s
        for key in [k for k, t in self._arrived.items() if t < cutoff]:
            self._forget(key)

    def _forget(self, key: _Key) -> None:
        slot = self._slots.pop(key)
        self._arrived.pop(key, None)
        if slot.done() and not slot.cancelled():
            pusher = slot.result()[0]
            self._unclaimed[pusher] -= 1
            if not self._unclaimed[pusher]:
                del self._unclaimed[pusher]

    def deliver(self, source: str, client: str, session: str, step: int, tensor: Any) -> None:
        """``source`` pushed the input of ``step`` of ``client``'s session ``session``."""
        if self._unclaimed.get(source, 0) >= self.per_pusher or len(self._slots) >= self.limit:
            self._expire()
        if self._unclaimed.get(source, 0) >= self.per_pusher:
            raise InputMissing(f"node {source} already has {self.per_pusher} inputs unclaimed here")
        slot = self._slot((client, session, step))
        if slot.done():
            raise Conflict(f"step {step} of session {session} already has its input")
        slot.set_result((source, tensor))
        self._unclaimed[source] = self._unclaimed.get(source, 0) + 1
        self._arrived[(client, session, step)] = time.monotonic()

    async def take(
        self, client: str, session: str, step: int, source: str, wait_s: float = PUSH_WAIT_S
    ) -> Any:
        """The input of ``step``, once pushed; refused unless it came from ``source`` (or the client)."""
        key = (client, session, step)
        slot = self._slot(key)
        try:
            async with asyncio.timeout(wait_s):
                pusher, tensor = await slot
        except TimeoutError:
            raise InputMissing(
                f"node {source} did not hand over the input of step {step} within {wait_s:g} s"
            ) from None
        finally:
            if self._slots.get(key) is slot:
                self._forget(key)
        if pusher not in (source, client):  # the session's own client may feed it too
            raise PermissionDenied(
                f"the input of step {step} came from node {pusher}, not from node {source}"
            )
        return tensor

    def drop(self, client: str, session: str) -> None:
        """The session's conversation ended: forget its unclaimed inputs.

        A request still waiting is not touched: it belongs to a conversation still open (the
        session may have been routed back to this node), and ends with its own conversation.
        """
        for key in [k for k, slot in self._slots.items() if k[:2] == (client, session) and slot.done()]:
            self._forget(key)
