"""The node and API-key half of the SQL store (a mixin of :class:`phage.store.sql.SqlStore`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.domain import Node, NodeState
from phage.errors import NotFound
from phage.store.base import ApiKeyRecord
from phage.store.rows import OPEN, node_from_row
from phage.store.schema import api_keys, attempts, nodes
from phage.store.writer import GroupCommitWriter

YIELD_EVERY = 500
"""Rows decoded between two turns of the event loop when many are read at once."""
T = TypeVar("T")

_HEARTBEAT = (
    nodes.update()
    .where(nodes.c.id == sa.bindparam("b_id"))
    .values(
        last_heartbeat=sa.bindparam("b_ts"),
        loaded_model=sa.bindparam("b_model"),
        # a heartbeat is not a change other replicas must re-read at once, unless it brings another model
        changed_at=sa.case(
            (nodes.c.loaded_model != sa.bindparam("b_model"), sa.bindparam("b_now")), else_=nodes.c.changed_at
        ),
    )
)
_RENEW_LEASE = (
    attempts.update()
    # no IN (…): an expanding parameter cannot be used with executemany, which renews leases in bulk
    .where(attempts.c.id == sa.bindparam("l_id"), sa.or_(*(attempts.c.state == s for s in OPEN)))
    .values(lease_expires_at=sa.bindparam("l_until"))
)


class NodeRecords:
    """Nodes, heartbeats, quarantine, reputation and API keys."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    async def upsert_node(self, node: Node) -> None:
        """Insert or replace a node's row."""
        row = {
            "id": node.id,
            "name": node.name,
            "state": node.state.value,
            "registered_at": node.registered_at,
            "last_heartbeat": node.last_heartbeat,
            "max_concurrency": node.max_concurrency,
            "hardware": node.hardware,
            "sandboxes": node.sandboxes,
            "loaded_model": node.loaded_model,
            "version": node.version,
            "cert_serial": node.cert_serial,
            "trusted": node.trusted,
            "quarantined": node.quarantined,
            "quarantine_reason": node.quarantine_reason,
            "reputation": node.reputation,
            "draining": node.draining,
            "max_jobs": node.max_jobs,
        }

        def op(conn: Connection) -> None:
            res = conn.execute(nodes.update().where(nodes.c.id == node.id).values(**row))
            if res.rowcount == 0:
                conn.execute(nodes.insert().values(**row))

        await self._writer.run(op)

    async def get_node(self, node_id: str) -> Node | None:
        """One node, or None."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(nodes.select().where(nodes.c.id == node_id))).first()
        return node_from_row(row) if row else None

    async def list_nodes(self, *, changed_since: float | None = None) -> list[Node]:
        """Every node; or those whose row changed (other than by heartbeats) at or after ``changed_since``.

        ``changed_since`` is wall-clock time (``time.time()``), as the rows record it.
        """
        query = nodes.select().order_by(nodes.c.registered_at)
        if changed_since is not None:
            query = query.where(nodes.c.changed_at >= changed_since)
        return await self._read_in_slices(query, node_from_row)

    async def node_heartbeats(self) -> list[tuple[str, float]]:
        """(node id, last heartbeat) of every node: what another replica needs often, without whole rows."""
        query = sa.select(nodes.c.id, nodes.c.last_heartbeat)
        return await self._read_in_slices(query, lambda r: (r.id, r.last_heartbeat))

    async def _read_in_slices(self, query: sa.Select[Any], convert: Callable[[Any], T]) -> list[T]:
        """Every row of a query that may return thousands, read and converted a slice at a time.

        A replica re-reads a big pool's node rows on a timer; done in one piece, decoding 10,000 rows
        (their JSON columns above all) held the event loop for a quarter of a second, which every
        heartbeat waiting meanwhile paid. A streamed result yields to the loop between slices.
        """
        out: list[T] = []
        async with self.engine.connect() as conn:
            result = await conn.stream(query)
            async for part in result.partitions(YIELD_EVERY):
                out.extend(convert(r) for r in part)
        return out

    async def record_heartbeats(
        self, beats: Sequence[tuple[str, float, str]], leases: Sequence[tuple[str, float]] = ()
    ) -> None:
        """(node id, last heartbeat, loaded model) rows and renewed (attempt id, lease expiry) rows, in bulk.

        Leases live in the store, not only in memory, so another coordinator sharing
        the database (or this one after a restart) sees the same deadlines.
        """
        if not beats and not leases:
            return
        now = time.time()
        beat_rows = [{"b_id": i, "b_ts": ts, "b_model": m, "b_now": now} for i, ts, m in beats]
        lease_rows = [{"l_id": a, "l_until": until} for a, until in leases]

        def op(conn: Connection) -> None:
            if beat_rows:
                conn.execute(_HEARTBEAT, beat_rows)
            if lease_rows:
                conn.execute(_RENEW_LEASE, lease_rows)

        await self._writer.run(op)

    async def set_node_state(self, node_id: str, state: NodeState) -> None:
        """Change one node's state."""

        def op(conn: Connection) -> None:
            res = conn.execute(nodes.update().where(nodes.c.id == node_id).values(state=state.value))
            if res.rowcount == 0:
                raise NotFound(f"no node {node_id!r}", field="id")

        await self._writer.run(op)

    async def set_admission(self, node_id: str, **values: Any) -> None:
        """Change a node's admission columns (state, trusted, draining, max_jobs) in one write."""
        allowed = {"state", "trusted", "draining", "max_jobs"}
        if not values or set(values) - allowed:
            raise ValueError(f"set_admission takes only {sorted(allowed)}")
        row = {k: (v.value if isinstance(v, NodeState) else v) for k, v in values.items()}

        def op(conn: Connection) -> None:
            res = conn.execute(nodes.update().where(nodes.c.id == node_id).values(**row))
            if res.rowcount == 0:
                raise NotFound(f"no node {node_id!r}", field="id")

        await self._writer.run(op)

    async def set_quarantine(self, node_id: str, quarantined: bool, reason: str) -> None:
        """Quarantine a node (it gets no work) or release it."""

        def op(conn: Connection) -> None:
            res = conn.execute(
                nodes.update()
                .where(nodes.c.id == node_id)
                .values(quarantined=quarantined, quarantine_reason=reason)
            )
            if res.rowcount == 0:
                raise NotFound(f"no node {node_id!r}", field="id")

        await self._writer.run(op)

    async def bump_reputation(self, node_id: str, counter: str, by: int = 1) -> dict[str, int]:
        """Add to one of a node's reputation counters; returns them all."""

        def op(conn: Connection) -> dict[str, int]:
            row = (conn.execute(sa.select(nodes.c.reputation).where(nodes.c.id == node_id))).first()
            if row is None:
                raise NotFound(f"no node {node_id!r}", field="id")
            rep = dict(row.reputation or {})
            rep[counter] = int(rep.get(counter, 0)) + by
            conn.execute(nodes.update().where(nodes.c.id == node_id).values(reputation=rep))
            return rep

        return await self._writer.run(op)

    # ---- API keys ----------------------------------------------------------

    async def add_api_key(self, key_id: str, secret_hash: str, name: str, role: str, now: float) -> None:
        """Store a key's hash."""

        def op(conn: Connection) -> None:
            conn.execute(
                api_keys.insert().values(
                    id=key_id, secret_hash=secret_hash, name=name, role=role, created_at=now, revoked=False
                )
            )

        await self._writer.run(op)

    async def find_api_key(self, secret_hash: str) -> ApiKeyRecord | None:
        """Look a key up by its hash."""
        async with self.engine.connect() as conn:
            r = (await conn.execute(api_keys.select().where(api_keys.c.secret_hash == secret_hash))).first()
        return None if r is None else key_record(r)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """All keys."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(api_keys.select().order_by(api_keys.c.created_at))
            return [key_record(r) for r in rows]


def key_record(r: sa.Row[Any]) -> ApiKeyRecord:
    """An ``api_keys`` row as a record."""
    return ApiKeyRecord(
        r.id,
        r.name,
        r.role,
        r.created_at,
        bool(r.revoked),
        r.credit_limit_tokens,
        int(r.used_tokens),
        r.requests_per_minute,
        r.tokens_per_minute,
        r.max_concurrent,
    )
