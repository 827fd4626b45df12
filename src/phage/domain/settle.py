"""Deciding what a task becomes after one of its attempts ends. Pure functions, no I/O.

A task wants ``replicas`` completed attempts (1 for a job, N for best-of-N).
An attempt *completes* when it yields a verdict (the job exited, the verifier
ran); it does not when the node failed or vanished, and the task is then
offered again while its attempt budget (``max_attempts × replicas``) lasts.
Once every wanted attempt has completed — or the budget is spent with no more
attempts open — the task settles: best-of-N keeps the passing attempt with the
fewest completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from phage.domain.models import TaskResult, TaskState


@dataclass(frozen=True, slots=True)
class Counters:
    """A task's attempt bookkeeping *after* the attempt in question was accounted for."""

    open_attempts: int
    completed_attempts: int
    replicas: int
    attempts_made: int
    max_attempts: int
    budget: int | None = None
    """Executions allowed in all; default ``max_attempts × replicas`` (quorum jobs: ``max_attempts``)."""

    @property
    def budget_left(self) -> bool:
        """May another attempt be dispatched?"""
        cap = self.max_attempts * self.replicas if self.budget is None else self.budget
        return self.attempts_made < cap


@dataclass(frozen=True, slots=True)
class Next:
    """What happens to the task now."""

    settle: bool = False
    """Pick the final result from the completed attempts."""
    requeue: bool = False
    """Offer the task to nodes again (a replacement attempt is needed)."""
    fail_reason: str = ""
    """Set when the task fails without any completed attempt to settle on."""
    waiting_state: TaskState | None = None
    """State while other attempts are still wanted or running."""


def next_step(c: Counters, *, completed_now: bool, reason: str = "") -> Next:
    """The task's next step after an attempt ended (``completed_now``: it yielded a verdict)."""
    if c.completed_attempts >= c.replicas:
        return Next(settle=True)
    needs_replacement = not completed_now
    if needs_replacement and c.budget_left:
        return Next(requeue=True, waiting_state=TaskState.QUEUED if c.open_attempts == 0 else None)
    if c.open_attempts > 0:
        return Next()  # others still running; their results decide
    if needs_replacement:
        if c.completed_attempts > 0:
            return Next(settle=True)
        cap = c.max_attempts * c.replicas if c.budget is None else c.budget
        return Next(fail_reason=f"{reason} (attempt {c.attempts_made} of {cap})")
    if c.budget_left:
        # completed, more replicas wanted, none open: the task waits in the queue for them
        return Next(waiting_state=TaskState.QUEUED)
    return Next(settle=True)  # the budget is spent: decide on what completed


@dataclass(frozen=True, slots=True)
class Candidate:
    """A completed attempt's result."""

    attempt_id: str
    finished_at: float
    result: TaskResult


def choose(candidates: list[Candidate]) -> tuple[Candidate | None, str]:
    """The passing attempt with the fewest completion tokens (earliest on a tie), or why none passed."""
    passing = [c for c in candidates if c.result.succeeded]
    if passing:
        best = min(passing, key=lambda c: (c.result.completion_tokens, c.finished_at, c.attempt_id))
        return best, ""
    if len(candidates) == 1:
        r = candidates[0].result
        if r.passed is False:
            return None, f"verifier failed with exit code {r.exit_code}"
        return None, r.error or f"exited with code {r.exit_code}"
    reasons = "; ".join(
        f"{c.attempt_id}: " + (c.result.error or f"exit code {c.result.exit_code}") for c in candidates
    )
    return None, f"no attempt passed ({reasons})"
