"""The coordinator's relay of activation frames: one bounded inbox per consuming VNode.

Producers send their frames straight to each consumer's node when they can
(:mod:`phage.coordinator.training_routes`); the relay carries the rest: frames to a
node that does not listen or cannot be reached, and end markers. Kept apart from
placement (:mod:`phage.coordinator.training`) because it is the transport: frames
are opaque bytes here, and only the generation of the VNode's current host decides
who may read them.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

INBOX_FRAMES = 32
"""Activation frames buffered per consumer before its producer is held back."""


@dataclass(frozen=True, slots=True)
class Frame:
    """An activation frame as relayed: opaque tensor bytes."""

    vnode_id: str
    seq: int
    tensor: bytes
    end: bool


class Inbox:
    """Frames bound for one VNode, kept across its hosts: a relocated VNode's new host drains them.

    Bounded, so a VNode that is slow or being moved holds its producers back rather
    than losing batches or piling up memory; only the reader of the current
    placement generation may take frames (a stale host's stream gets ``None``).
    """

    def __init__(self, capacity: int = INBOX_FRAMES) -> None:
        self.frames: collections.deque[Frame] = collections.deque()
        self.capacity = capacity
        self.generation = -1
        self.closed = False
        self.epoch = 0
        """Moves on at every :meth:`drop_batches`: a put waiting for room since before is dropped too."""
        self._cond = asyncio.Condition()

    async def put(self, frame: Frame, *, force: bool = False) -> None:
        """Add a frame, waiting for room (``force``: an end marker, never held back)."""
        epoch = self.epoch
        async with self._cond:
            if not force:
                await self._cond.wait_for(lambda: self.closed or len(self.frames) < self.capacity)
            if not self.closed and (self.epoch == epoch or frame.end):
                self.frames.append(frame)
                self._cond.notify_all()

    async def get(self, generation: int) -> Frame | None:
        """The next frame for the reader of ``generation``; None once that reader is stale."""
        async with self._cond:
            await self._cond.wait_for(
                lambda: self.closed or self.generation != generation or bool(self.frames)
            )
            if self.closed or self.generation != generation:
                return None
            frame = self.frames.popleft()
            self._cond.notify_all()
            return frame

    async def attach(self, generation: int) -> None:
        """Make ``generation``'s reader the only one (older readers end)."""
        async with self._cond:
            self.generation = generation
            self._cond.notify_all()

    async def drop_batches(self) -> None:
        """Forget the batches waiting here (end markers stay): their producers will send them again."""
        async with self._cond:
            self.epoch += 1
            self.frames = collections.deque(f for f in self.frames if f.end)
            self._cond.notify_all()

    async def close(self) -> None:
        """Release every waiting producer and reader for good."""
        async with self._cond:
            self.closed = True
            self.frames.clear()
            self._cond.notify_all()
