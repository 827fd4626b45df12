"""Group commit on a dedicated writer thread: many write operations share one transaction.

SQLite allows one writer at a time and every statement issued through an async
driver costs a hop between the event loop and the driver's thread. So the
coordinator funnels every write through one queue; a single writer thread
takes whatever has gathered and runs it, synchronously, as one transaction —
one hop per batch instead of several per statement. Under load thousands of
small writes per second become tens of commits; when idle, a lone write
commits at once. If an operation in a batch raises, the batch is rolled back
and each operation is retried in a transaction of its own, so one bad write
never fails its neighbours. Reads do not come here: they use the async engine
and, with WAL, never wait for the writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")
WriteOp = Callable[[Connection], Any]

MAX_BATCH = 512


class GroupCommitWriter:
    """Runs write operations on one connection in one thread, batching those that arrive together."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # One thread: SQLite connections belong to the thread that made them.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phage-writer")
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
        await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.dispose)
        self._thread.shutdown(wait=True)

    async def run(self, op: Callable[[Connection], T]) -> T:
        """Run ``op`` inside the next committed transaction and return its result."""
        if self._closed:
            raise RuntimeError("store writer is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self.batches += 1
                self.ops += len(batch)
                outcomes = await loop.run_in_executor(self._thread, self._commit, [op for op, _ in batch])
                for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
            if self._closed and not self._pending:
                return

    def _commit(self, ops: list[WriteOp]) -> list[tuple[bool, Any]]:
        """In the writer thread: all ops in one transaction, or each alone if one fails."""
        try:
            with self._engine.begin() as conn:
                return [(True, op(conn)) for op in ops]
        except Exception as exc:
            if len(ops) == 1:
                return [(False, exc)]
        return [self._solo(op) for op in ops]

    def _solo(self, op: WriteOp) -> tuple[bool, Any]:
        try:
            with self._engine.begin() as conn:
                return True, op(conn)
        except Exception as exc:  # handed to the caller, who awaits this op
            return False, exc
