"""The live event feed: every task and node state change, fanned out to subscribers.

Subscribers get a bounded queue; one that falls behind loses its oldest
events and is told how many (``{"type": "lagged"}``) rather than slowing the
coordinator down. With several coordinator replicas each bus hands its own
events to a relay (``coordinator/replicas.py``) and takes the other replicas'
events from it, so a subscriber on any replica sees every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

Event = dict[str, Any]


class Subscription:
    """One subscriber's queue."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        """Enqueue without blocking, dropping the oldest event when full."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def next(self) -> Event:
        """The next event, or a ``lagged`` notice if some were dropped."""
        if self.dropped:
            n, self.dropped = self.dropped, 0
            return {"type": "lagged", "dropped": n, "ts": time.time()}
        return await self.queue.get()


class EventBus:
    """Publish/subscribe for coordinator events."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size
        self.published = 0
        self.relay: Callable[[Event], None] | None = None
        """Other replicas' subscribers: every local event is handed here too (None: one coordinator)."""

    @property
    def has_subscribers(self) -> bool:
        """Skip building events nobody will read."""
        return bool(self._subs) or self.relay is not None

    def publish(self, event: Event) -> None:
        """Send to every subscriber, here and (through the relay) on the other replicas."""
        self.published += 1
        if not self.has_subscribers:
            return
        event.setdefault("ts", time.time())
        if self.relay is not None:
            self.relay(event)
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        """Send to this replica's subscribers only (an event another replica published)."""
        for sub in self._subs:
            sub.offer(event)

    def task(self, task_id: str, state: str, **extra: Any) -> None:
        """A task changed state."""
        if self.has_subscribers:
            self.publish({"type": "task", "id": task_id, "state": state, **extra})

    def node(self, node_id: str, state: str, **extra: Any) -> None:
        """A node changed state."""
        if self.has_subscribers:
            self.publish({"type": "node", "id": node_id, "state": state, **extra})

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the ``async with``."""
        sub = Subscription(self._queue_size)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
