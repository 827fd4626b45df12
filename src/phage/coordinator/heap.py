"""Keep Python's cycle collector from stopping the coordinator for a fifth of a second at a time.

A coordinator holding a big pool keeps millions of long-lived Python objects: a
record per node, its metrics, leases, sessions, gRPC call state. CPython's full
(generation 2) collection walks every one of them, with the event loop stopped.
At 10,000 nodes that was 140–270 ms every 12–20 s on a two-core machine, which
was the whole of the heartbeat tail: p50 1.7 ms, p99 154 ms (``BENCHMARKS.md``).

Reference counting frees almost all of the coordinator's garbage; the cycle
collector is there for the rest. So every ``freeze_period_s`` the objects
that survived the young generations' collection — the pool's state and each
node's latest metrics, not garbage — are moved out of its way
(``gc.freeze()``: they stay alive and are freed by reference counting as
before, but no collection walks them). Collections in between then walk only
what arrived since the last freeze, a few seconds' worth. A cycle that was
already garbage when frozen, or becomes garbage later among frozen objects,
waits for the deep pass: every ``deep_period_s`` everything is unfrozen,
collected once, and frozen again — one full-length pause an hour instead of
several a minute. The price is that hour's cyclic garbage held in memory,
which in a coordinator is small (exceptions and their tracebacks, mostly).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("phage.coordinator")


class HeapKeeper:
    """Freeze long-lived objects on a period; a deep collection on a longer one."""

    def __init__(self, *, freeze_period_s: float = 10.0, deep_period_s: float = 3600.0) -> None:
        self.freeze_period_s = freeze_period_s
        self.deep_period_s = deep_period_s
        self.longest_pause_s = 0.0
        """The longest collection this keeper ran (the deep ones dominate)."""

    def freeze(self) -> float:
        """Collect the young generations, freeze what survived; returns the pause in seconds."""
        t0 = time.perf_counter()
        gc.collect(1)
        gc.freeze()
        return self._paused(t0, "collection before freeze")

    def deep(self) -> float:
        """Unfreeze, collect everything, freeze again; returns the pause in seconds."""
        t0 = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        pause = self._paused(t0, "deep collection")
        log.debug("deep collection found %d unreachable objects; %d frozen", found, gc.get_freeze_count())
        return pause

    def _paused(self, t0: float, what: str) -> float:
        pause = time.perf_counter() - t0
        self.longest_pause_s = max(self.longest_pause_s, pause)
        if pause > 0.05:
            log.info("%s paused the coordinator for %.0f ms", what, pause * 1000)
        return pause

    async def run(self) -> None:
        """Until cancelled: freeze every ``freeze_period_s``, a deep pass every ``deep_period_s``."""
        last_deep = time.monotonic()
        while True:
            await asyncio.sleep(self.freeze_period_s)
            if time.monotonic() - last_deep >= self.deep_period_s:
                self.deep()
                last_deep = time.monotonic()
            else:
                self.freeze()

    @staticmethod
    def release() -> None:
        """Hand every frozen object back to the collector (on stop: a process that goes on is as before)."""
        gc.unfreeze()
