"""How many assignments a node holds at once: its slots, plus a short look-ahead of queued work.

A node runs at most ``slots`` tasks at once; that is the cap on real work (CPU,
memory, sandboxes). If it fetched only as many tasks as it has free slots, every
slot would sit idle for a fetch round trip after each task, and a pool of short
tasks would be capped by round trips rather than by the machine (four 50 ms jobs
per ~10 ms cycle, or a few hundred no-op tasks per second per node).

So a node also holds — claimed and started, waiting locally for a slot — as many
more tasks as it expects its slots to finish within ``LOOKAHEAD_S``, judged by
how long recent tasks took. A long task is believed at once and shrinks the
look-ahead to nothing, so long jobs still spread over the pool's nodes as
before; short ones grow it back gradually. The look-ahead also lapses when no
task has finished for ``RECENT_S``: after a quiet spell a node takes only its
slots, so a burst of long tasks is not taken by the first node to ask. Tasks
that run nothing (``noop``) take no slot at all.
"""

from __future__ import annotations

import time

from phage.domain.models import MAX_HELD_ASSIGNMENTS

LOOKAHEAD_S = 0.25
"""Queued work a node may hold beyond its slots, in expected seconds of one slot's time."""
MAX_HELD = MAX_HELD_ASSIGNMENTS
"""Never more assignments held at once than this (as many as the coordinator allows)."""
DECAY = 0.2
"""Weight of each new, shorter duration in the running estimate."""
RECENT_S = 1.0
"""The look-ahead holds only while some task finished this recently."""


class ClaimWindow:
    """The number of assignments to hold at once, from the durations of recent tasks."""

    def __init__(self, slots: int, *, lookahead_s: float = LOOKAHEAD_S, max_held: int = MAX_HELD) -> None:
        self.slots = max(1, slots)
        self.lookahead_s = lookahead_s
        self.max_held = max(max_held, self.slots)
        self.typical_s: float | None = None
        """Estimated seconds a task holds a slot; None until one finished."""
        self.last_finished = -RECENT_S
        """When the last task finished (``time.monotonic()``)."""

    def record(self, seconds: float, now: float | None = None) -> None:
        """One task finished after ``seconds`` (0 for a task that took no slot)."""
        self.last_finished = time.monotonic() if now is None else now
        seconds = max(0.0, seconds)
        if self.typical_s is None or seconds >= self.typical_s:
            self.typical_s = seconds  # believe a longer task at once: never hoard long work
        else:
            self.typical_s += DECAY * (seconds - self.typical_s)

    def size(self, running_for: float = 0.0, now: float | None = None) -> int:
        """How many assignments to hold (running plus waiting for a slot).

        ``running_for``: how long the longest task now in a slot has run. A task still
        running past the estimate counts as that long already, so a burst of long tasks
        after short ones closes the window while the first of them runs, not after it.
        """
        now = time.monotonic() if now is None else now
        if self.typical_s is None or now - self.last_finished > RECENT_S:
            return self.slots
        typical = max(self.typical_s, running_for)
        if typical <= 0:
            return self.max_held
        extra = self.slots * self.lookahead_s / typical
        return int(min(self.max_held, self.slots + extra))
