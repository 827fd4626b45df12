"""What this coordinator process counted since it started (Prometheus counters start at zero too)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """Event counts of this process; the store holds the durable totals."""

    submitted: int = 0
    verified: int = 0
    failed: int = 0
    requeued: int = 0
    disagreements: int = 0
    """Quorum verdicts that proved a node wrong (each quarantines it)."""
    chat_completions: int = 0
