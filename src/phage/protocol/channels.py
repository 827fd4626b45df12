"""gRPC channels that close under running calls, and how a task tells that from being cancelled."""

from __future__ import annotations

import asyncio

import grpc


def channel_closed_under(exc: BaseException) -> bool:
    """True when ``exc`` ended a call because its channel was closed, not because this task is stopping.

    The node closes its channel when it moves to another coordinator replica. gRPC then ends
    every call still open on that channel, and a task awaiting one sees ``asyncio.CancelledError``
    (or, for a call it starts on the closed channel, a ``UsageError``) — exactly what a task being
    cancelled sees. A loop that re-raised it died with the move: the fetch loop, the result sender,
    the chat and training order streams. This tells the two apart: a task really being cancelled
    has a cancellation request pending.
    """
    if isinstance(exc, grpc.aio.UsageError):
        return True
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
