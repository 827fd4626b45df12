"""Usage metering and key administration (a mixin of :class:`phage.store.sql.SqlStore`).

One row per API key × model × node, incremented as chat completions finish, so
``GET /api/usage`` and credit checks are a small sum, not a scan of every request
ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.errors import NotFound
from phage.store.schema import api_keys, usage
from phage.store.writer import GroupCommitWriter


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Tokens one key spent on one model on one node."""

    key_id: str
    model: str
    node_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


class UsageRecords:
    """Usage rows and key limits."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    async def add_usage(
        self, key_id: str, model: str, node_id: str, prompt_tokens: int, completion_tokens: int, now: float
    ) -> None:
        """Count one request's tokens.

        Writes are serialised by the writer thread, so update-then-insert cannot race.
        """

        def op(conn: Connection) -> None:
            where = (usage.c.key_id == key_id) & (usage.c.model == model) & (usage.c.node_id == node_id)
            done = conn.execute(
                usage.update()
                .where(where)
                .values(
                    requests=usage.c.requests + 1,
                    prompt_tokens=usage.c.prompt_tokens + prompt_tokens,
                    completion_tokens=usage.c.completion_tokens + completion_tokens,
                    updated_at=now,
                )
            )
            if done.rowcount == 0:
                conn.execute(
                    usage.insert().values(
                        key_id=key_id,
                        model=model,
                        node_id=node_id,
                        requests=1,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        updated_at=now,
                    )
                )

        await self._writer.run(op)

    async def usage_rows(self, key_id: str | None = None) -> list[UsageRow]:
        """Every usage row, or one key's."""
        q = usage.select().order_by(usage.c.key_id, usage.c.model, usage.c.node_id)
        if key_id is not None:
            q = q.where(usage.c.key_id == key_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q)
            return [
                UsageRow(r.key_id, r.model, r.node_id, r.requests, r.prompt_tokens, r.completion_tokens)
                for r in rows
            ]

    async def tokens_used(self, key_id: str) -> int:
        """Prompt + completion tokens a key has used in all."""
        q = sa.select(
            sa.func.coalesce(sa.func.sum(usage.c.prompt_tokens + usage.c.completion_tokens), 0)
        ).where(usage.c.key_id == key_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())

    async def revoke_api_key(self, key_id: str) -> None:
        """Mark a key revoked (it is refused from then on)."""
        await self._update_key(key_id, revoked=True)

    async def set_credit_limit(self, key_id: str, tokens: int | None) -> None:
        """Set a key's credit limit in tokens; ``None`` lifts it."""
        await self._update_key(key_id, credit_limit_tokens=tokens)

    async def _update_key(self, key_id: str, **values: object) -> None:
        def op(conn: Connection) -> None:
            if conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values)).rowcount == 0:
                raise NotFound(f"no API key {key_id!r}", field="key_id")

        await self._writer.run(op)
