"""Training jobs and VNode states (a mixin of :class:`phage.store.sql.SqlStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.domain.networks import NetworkRecord, NetworkState, TrainingConfig, VNodeState
from phage.errors import NotFound
from phage.store.schema import networks, vnode_states
from phage.store.writer import GroupCommitWriter


def _network(r: Row[Any]) -> NetworkRecord:
    return NetworkRecord(
        id=r.id,
        name=r.name,
        owner=r.owner,
        state=NetworkState(r.state),
        spec=r.spec,
        config=TrainingConfig.parse(r.config),
        dataset=r.dataset,
        created_at=r.created_at,
        updated_at=r.updated_at,
        result=r.result,
        error=r.error,
    )


def _vnode(r: Row[Any]) -> VNodeState:
    return VNodeState(
        network_id=r.network_id,
        vnode_id=r.vnode_id,
        node_id=r.node_id,
        generation=r.generation,
        step=r.step,
        last_batch=r.last_batch,
        checkpoint=r.checkpoint,
        checkpoint_step=r.checkpoint_step,
        validated_checkpoint=r.validated_checkpoint,
        done=r.done,
        history=tuple((int(s), float(v)) for s, v in r.history),
        updated_at=r.updated_at,
    )


def _vnode_values(v: VNodeState) -> dict[str, Any]:
    return {
        "node_id": v.node_id,
        "generation": v.generation,
        "step": v.step,
        "last_batch": v.last_batch,
        "checkpoint": v.checkpoint,
        "checkpoint_step": v.checkpoint_step,
        "validated_checkpoint": v.validated_checkpoint,
        "done": v.done,
        "history": [list(p) for p in v.history],
        "updated_at": v.updated_at,
    }


class TrainingRecords:
    """Networks and their VNodes."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    async def add_network(self, net: NetworkRecord, vnodes: Sequence[str]) -> None:
        """Record a training job and a fresh state for each of its VNodes, in one transaction."""

        def op(conn: Connection) -> None:
            conn.execute(
                networks.insert().values(
                    id=net.id,
                    name=net.name,
                    owner=net.owner,
                    state=net.state.value,
                    spec=dict(net.spec),
                    config=net.config.to_dict(),
                    dataset=net.dataset,
                    created_at=net.created_at,
                    updated_at=net.updated_at,
                    result=None,
                    error="",
                )
            )
            conn.execute(
                vnode_states.insert(),
                [
                    {"network_id": net.id, "vnode_id": v, **_vnode_values(VNodeState(net.id, v))}
                    for v in vnodes
                ],
            )

        await self._writer.run(op)

    async def get_network(self, network_id: str) -> NetworkRecord:
        """One training job."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(networks.select().where(networks.c.id == network_id))).first()
        if row is None:
            raise NotFound(f"no network {network_id!r}", field="id")
        return _network(row)

    async def list_networks(self, state: NetworkState | None = None, limit: int = 100) -> list[NetworkRecord]:
        """Training jobs, newest first."""
        q = networks.select().order_by(networks.c.created_at.desc()).limit(limit)
        if state is not None:
            q = q.where(networks.c.state == state.value)
        async with self.engine.connect() as conn:
            return [_network(r) for r in await conn.execute(q)]

    async def vnode_states(self, network_id: str) -> list[VNodeState]:
        """Every VNode of a network."""
        q = vnode_states.select().where(vnode_states.c.network_id == network_id)
        async with self.engine.connect() as conn:
            return [_vnode(r) for r in await conn.execute(q)]

    async def save_vnode(self, v: VNodeState) -> None:
        """Write one VNode's state."""

        def op(conn: Connection) -> None:
            conn.execute(
                vnode_states.update()
                .where((vnode_states.c.network_id == v.network_id) & (vnode_states.c.vnode_id == v.vnode_id))
                .values(**_vnode_values(v))
            )

        await self._writer.run(op)

    async def finish_network(
        self, network_id: str, state: NetworkState, now: float, result: dict[str, Any] | None, error: str = ""
    ) -> None:
        """Mark a training job ended."""

        def op(conn: Connection) -> None:
            done = conn.execute(
                networks.update()
                .where(networks.c.id == network_id)
                .values(state=state.value, updated_at=now, result=result, error=error)
            )
            if done.rowcount == 0:
                raise NotFound(f"no network {network_id!r}", field="id")

        await self._writer.run(op)

    async def network_count(self) -> int:
        """How many training jobs exist (for metrics)."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(networks))).scalar_one())
