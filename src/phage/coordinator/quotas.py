"""What a user (non-admin) key may ask of the pool, checked before anything is stored.

Admins run the pool and are trusted with its knobs; a user key is one tenant among many, so
it may not jump the queue (``priority`` above ``user_max_priority``), make a failing task
burn the pool for long (``max_attempts`` above ``user_max_attempts``), create huge batches in
one request (``user_max_tasks_per_request``, counting ``count`` and replicas' parents alike),
or hold more than ``user_max_open_tasks`` unfinished tasks at once.

The open-task quota is counted in the store before the submit; two submits racing from one
key can overshoot it by one request's worth, never more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from phage.coordinator.keys import Principal
from phage.coordinator.requests import TaskRequest
from phage.errors import InvalidInput, PermissionDenied, RateLimited


@dataclass(frozen=True, slots=True)
class UserLimits:
    """The caps on user keys (``CoordinatorSettings.user_*``)."""

    max_priority: int
    max_attempts: int
    max_tasks_per_request: int
    max_open_tasks: int


class SubmitQuotas:
    """Refuses a user's submit that is over a cap, naming the field and the limit."""

    def __init__(self, limits: UserLimits, count_open: Callable[[str], Awaitable[int]]) -> None:
        self.limits = limits
        self._count_open = count_open

    async def check(self, requests: Sequence[TaskRequest], who: Principal) -> None:
        """Raise unless ``who`` may submit ``requests``; admins may submit anything valid."""
        if who.is_admin:
            return
        lim = self.limits
        for i, req in enumerate(requests):
            where = f"tasks[{i}]." if len(requests) > 1 else ""
            if req.priority > lim.max_priority:
                raise PermissionDenied(
                    f"{where}priority {req.priority} is above {lim.max_priority}, "
                    "the most a user key may set",
                    field=f"{where}priority",
                )
            if req.max_attempts > lim.max_attempts:
                raise PermissionDenied(
                    f"{where}max_attempts {req.max_attempts} is above {lim.max_attempts}, "
                    "the most a user key may set",
                    field=f"{where}max_attempts",
                )
        total = sum(r.count for r in requests)
        if total > lim.max_tasks_per_request:
            raise InvalidInput(
                f"this request would create {total} tasks; a user key may create at most "
                f"{lim.max_tasks_per_request} per request",
                field="count",
            )
        open_now = await self._count_open(who.key_id)
        if open_now + total > lim.max_open_tasks:
            raise RateLimited(
                f"key {who.name!r} has {open_now} unfinished tasks; with {total} more it would pass its "
                f"quota of {lim.max_open_tasks}: wait for some to finish or cancel them",
                field="tasks",
                retry_after_s=10.0,
            )
