"""Retention: deleting finished tasks past their keep time, and finding every blob still referenced
(a mixin of :class:`phage.store.sql.SqlStore`).

Which blobs are referenced is read from the data itself, not from a list of known fields: every
sha256-shaped string in any JSON or text column of any table counts. That errs on the side of
keeping (an API key's hash keeps a blob of that name, if one ever existed), and a table or field
added later protects its blobs without this module knowing about it.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.domain import TaskState
from phage.store.schema import attempts, metadata, tasks
from phage.store.writer import GroupCommitWriter

DIGEST = re.compile(r"[0-9a-f]{64}")
DELETE_BATCH = 2000


class RetentionRecords:
    """Finished-task deletion and the referenced-blob scan."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    async def delete_finished_tasks(self, finished_before: float) -> int:
        """Delete verified, failed and cancelled tasks (with their attempts) finished before a time."""
        terminal = [s.value for s in TaskState if s.terminal]

        def op(conn: Connection) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    sa.select(tasks.c.id)
                    .where(tasks.c.state.in_(terminal), tasks.c.finished_at < finished_before)
                    .limit(DELETE_BATCH)
                )
            ]
            if ids:
                conn.execute(attempts.delete().where(attempts.c.task_id.in_(ids)))
                conn.execute(tasks.delete().where(tasks.c.id.in_(ids)))
            return len(ids)

        total = 0
        while deleted := await self._writer.run(op):  # in batches: other writes interleave
            total += deleted
        return total

    async def referenced_digests(self) -> set[str]:
        """Every sha256-shaped string stored in any JSON or text column (the blobs to keep)."""
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for table in metadata.sorted_tables:
                cols = [c for c in table.columns if isinstance(c.type, sa.JSON | sa.String | sa.Text)]
                if not cols:
                    continue
                result = await conn.stream(sa.select(*cols))
                async for row in result:
                    for value in row:
                        if value is not None:
                            found.update(DIGEST.findall(value if isinstance(value, str) else repr(value)))
        return found
