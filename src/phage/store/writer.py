"""Group commit: many concurrent write operations share one transaction.

SQLite allows one writer at a time and each commit costs an fsync-sized
pause, so the coordinator funnels every write through one queue and commits
whatever has gathered as a single transaction. Under load that turns
thousands of small commits per second into tens of larger ones; when idle a
lone write commits at once. If any operation in a batch raises, the batch is
rolled back and each operation is retried in a transaction of its own, so one
bad write never fails its neighbours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
WriteOp = Callable[[AsyncConnection], Awaitable[Any]]

MAX_BATCH = 512


class GroupCommitWriter:
    """Runs write operations on one connection, batching those that arrive together."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        """Begin the background commit loop."""
        self._task = asyncio.create_task(self._loop(), name="phage-store-writer")

    async def stop(self) -> None:
        """Finish what is pending, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def run(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``op`` inside the next committed transaction and return its result."""
        if self._closed:
            raise RuntimeError("store writer is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._commit(batch)
            if self._closed and not self._pending:
                return

    async def _commit(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.ops += len(batch)
        results: list[Any] = []
        try:
            async with self._engine.begin() as conn:
                for op, _ in batch:
                    results.append(await op(conn))
        except Exception as exc:
            if len(batch) == 1:
                fut = batch[0][1]
                if not fut.done():
                    fut.set_exception(exc)
                return
            for item in batch:
                await self._solo(item)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _solo(self, item: tuple[WriteOp, asyncio.Future[Any]]) -> None:
        op, fut = item
        try:
            async with self._engine.begin() as conn:
                result = await op(conn)
        except Exception as exc:  # handed to the caller, who awaits this op
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(result)
