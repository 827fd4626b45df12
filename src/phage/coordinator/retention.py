"""Keeping the data directory from growing without end: finished tasks past their retention are
deleted, then every blob nothing refers to any more (``phage gc``, ``POST /api/gc``, and the
coordinator's sweep every ``gc_period_s``).

Order matters for safety, not only for yield: the time limit for blobs is taken first, then the
references are read (see :meth:`phage.store.blobs.BlobStore.sweep`), so a blob that a task or
result being written right now refers to is never deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from phage.store import SqlStore
from phage.store.blobs import BlobStore

log = logging.getLogger("phage.retention")


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one sweep removed."""

    tasks_deleted: int
    blobs_deleted: int
    bytes_freed: int


class Collector:
    """Deletes finished tasks past retention, then unreferenced blobs past their grace time."""

    def __init__(
        self,
        *,
        store: SqlStore,
        blobs: BlobStore,
        clock: Callable[[], float],
        retention_s: float,
        blob_grace_s: float,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._clock = clock
        self.retention_s = retention_s
        self.blob_grace_s = blob_grace_s
        self._lock = asyncio.Lock()

    async def sweep(self, retention_s: float | None = None) -> GcReport:
        """One pass; ``retention_s`` overrides the configured retention (0 keeps every task)."""
        keep_for = self.retention_s if retention_s is None else retention_s
        async with self._lock:
            now = self._clock()
            tasks = await self._store.delete_finished_tasks(now - keep_for) if keep_for > 0 else 0
            older_than = now - self.blob_grace_s
            referenced = await self._store.referenced_digests()
            blobs, freed = await asyncio.to_thread(self._blobs.sweep, referenced, older_than)
        if tasks or blobs:
            log.info("gc: %d finished tasks deleted, %d blobs (%d bytes) freed", tasks, blobs, freed)
        return GcReport(tasks, blobs, freed)
