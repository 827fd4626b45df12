"""Per-key rate limits for chat: requests and tokens a minute, and chats in flight at once.

Windows are sliding (the last 60 seconds, not calendar minutes), so a key cannot
double its rate across a minute boundary, and ``Retry-After`` is exact: the moment
enough of the window has aged out. They live in the coordinator's memory: with
several coordinators behind a balancer each enforces its own share, which is what
keeps one key from crowding out everyone else on *that* coordinator's nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from phage.errors import RateLimited

WINDOW_S = 60.0
"""The window the per-minute limits count over (tests shorten it)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's limits in force; None: unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None


@dataclass(slots=True)
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0

    def age(self, now: float, window_s: float) -> None:
        while self.requests and self.requests[0] <= now - window_s:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - window_s:
            self.token_sum -= self.tokens.popleft()[1]

    @property
    def idle(self) -> bool:
        return not self.requests and not self.tokens and not self.in_flight


class KeyRates:
    """Admits or refuses each key's requests against its limits (429 with when to retry)."""

    def __init__(self, clock: Callable[[], float], window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self.window_s = window_s
        self._keys: dict[str, _Window] = {}

    def admit(self, key_id: str, limits: Limits) -> None:
        """Count a request starting now, or raise RateLimited saying when to retry."""
        now = self._clock()
        w = self._keys.setdefault(key_id, _Window())
        w.age(now, self.window_s)
        if limits.max_concurrent is not None and w.in_flight >= limits.max_concurrent:
            raise RateLimited(
                f"this API key has {w.in_flight} requests in flight; "
                f"its limit is {limits.max_concurrent} at once",
                retry_after_s=1.0,
                field="Authorization",
            )
        rpm = limits.requests_per_minute
        if rpm is not None and len(w.requests) >= rpm:
            wait = w.requests[len(w.requests) - rpm] + self.window_s - now
            raise RateLimited(
                f"this API key made {len(w.requests)} requests in the last {self.window_s:g} s; "
                f"its limit is {rpm} per {self.window_s:g} s",
                retry_after_s=wait,
                field="Authorization",
            )
        tpm = limits.tokens_per_minute
        if tpm is not None and w.token_sum >= tpm:
            over, wait = w.token_sum - tpm, self.window_s
            for at, n in w.tokens:  # the window frees tokens as its oldest entries age out
                over -= n
                if over < 0:
                    wait = at + self.window_s - now
                    break
            raise RateLimited(
                f"this API key used {w.token_sum} tokens in the last {self.window_s:g} s; "
                f"its limit is {tpm} per {self.window_s:g} s",
                retry_after_s=wait,
                field="Authorization",
            )
        w.requests.append(now)
        w.in_flight += 1

    def done(self, key_id: str, tokens: int) -> None:
        """A request admitted earlier ended, having used ``tokens``."""
        w = self._keys.get(key_id)
        if w is None:
            return
        w.in_flight = max(0, w.in_flight - 1)
        if tokens:
            w.tokens.append((self._clock(), tokens))
            w.token_sum += tokens
        w.age(self._clock(), self.window_s)
        if w.idle:
            del self._keys[key_id]

    def in_flight(self, key_id: str) -> int:
        """Requests of this key running now."""
        w = self._keys.get(key_id)
        return w.in_flight if w else 0
