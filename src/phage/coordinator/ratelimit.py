"""Per-source token buckets: how often one address may try something before it is told to wait.

Used at the edges that an unauthenticated peer can reach: Register on the enrollment port
(attempts, wrong join tokens, new identities) and failed API keys on the HTTP port. A bucket
holds ``burst`` tokens and refills at ``per_s``; an empty bucket refuses until it refills.

The table of buckets is itself bounded (an attacker with many addresses must not grow it
without end): past ``max_sources`` the least recently used bucket is forgotten, which at
worst hands that address a fresh burst.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from phage.errors import RateLimited

MAX_SOURCES = 65_536


@dataclass(frozen=True, slots=True)
class Rate:
    """How much one source may do: ``burst`` at once, then ``per_s`` per second."""

    burst: int
    """Tokens a fresh (or long idle) source starts with."""
    per_s: float
    """Tokens added per second, up to ``burst``."""


class RateLimiter:
    """Token buckets keyed by source address (``what`` names the action in refusals)."""

    def __init__(
        self,
        rate: Rate,
        what: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.rate = rate
        self.what = what
        self._clock = clock
        self._max = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """source -> (tokens, when last refilled)."""
        self.refused = 0

    def _tokens(self, source: str) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(source, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - at) * self.rate.per_s)
        self._buckets[source] = (tokens, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return tokens

    def retry_after(self, source: str, cost: float = 1.0) -> float:
        """Seconds until ``source`` may spend ``cost``; 0 when it may now."""
        tokens = self._tokens(source)
        if tokens >= cost:
            return 0.0
        return (cost - tokens) / self.rate.per_s if self.rate.per_s > 0 else float("inf")

    def check(self, source: str, cost: float = 1.0) -> None:
        """Raise :class:`RateLimited` if ``source`` has less than ``cost`` left (takes none)."""
        wait = self.retry_after(source, cost)
        if wait > 0:
            self.refused += 1
            raise RateLimited(
                f"too many {self.what} from {source}: at most {self.rate.burst} at once and "
                f"{self.rate.per_s:g} per second; retry in {wait:.1f} s",
                retry_after_s=wait,
            )

    def charge(self, source: str, cost: float = 1.0) -> None:
        """Spend ``cost`` of ``source``'s tokens (it may go to zero, never below)."""
        tokens = self._tokens(source)
        self._buckets[source] = (max(0.0, tokens - cost), self._clock())

    def take(self, source: str, cost: float = 1.0) -> None:
        """:meth:`check`, then :meth:`charge`: an attempt that counts whatever its outcome."""
        self.check(source, cost)
        self.charge(source, cost)

    def __len__(self) -> int:
        return len(self._buckets)


def grpc_peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, ``unix:…``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
