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
from typing import Any

from phage.errors import Conflict, InputMissing, PermissionDenied, Unavailable

INBOX_LIMIT = 1024
"""Pushed inputs (and requests awaiting theirs) held at once by one node."""
PUSH_WAIT_S = 60.0
"""How long a request waits for its pushed input; the client gives up on the step sooner if
the node before fails, and closing the conversation ends the wait."""


_Key = tuple[str, str, int]
"""(client node id, the client's session id, step)."""


class Inbox:
    """Pushed inputs of every session on this node, by (client, session, step)."""

    def __init__(self, limit: int = INBOX_LIMIT) -> None:
        self.limit = limit
        self._slots: dict[_Key, asyncio.Future[tuple[str, Any]]] = {}

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
                del self._slots[key]
                return
        raise Unavailable(f"this node already holds {self.limit} pushed inputs or requests awaiting them")

    def deliver(self, source: str, client: str, session: str, step: int, tensor: Any) -> None:
        """``source`` pushed the input of ``step`` of ``client``'s session ``session``."""
        slot = self._slot((client, session, step))
        if slot.done():
            raise Conflict(f"step {step} of session {session} already has its input")
        slot.set_result((source, tensor))

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
                del self._slots[key]
        if pusher not in (source, client):  # the session's own client may feed it too
            raise PermissionDenied(
                f"the input of step {step} came from node {pusher}, not from node {source}"
            )
        return tensor

    def drop(self, client: str, session: str) -> None:
        """The session ended: forget its inputs."""
        for key in [k for k in self._slots if k[0] == client and k[1] == session]:
            del self._slots[key]
