"""Pool routes: the pool's status, its nodes, and an admin's quarantine, release and removal.

Admission actions (approve, reject, drain, caps) are in ``admission_api.py``.
"""
# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.views import node_public


def install_nodes(
    app: FastAPI, c: Coordinator, principal: Callable[[Request], Coroutine[Any, Any, Principal]]
) -> None:
    """Add the pool and node routes."""
    Caller = Annotated[Principal, Depends(principal)]

    @app.get("/api/status", tags=["pool"])
    async def status(who: Caller) -> dict[str, Any]:
        """Pool summary: nodes, VRAM, queue."""
        return await c.overview.status()

    @app.get("/api/nodes", tags=["pool"])
    async def nodes(who: Caller) -> dict[str, Any]:
        """Every node with its live figures."""
        return {"nodes": [node_public(n) for n in c.nodes.all()]}

    @app.post("/api/nodes/{node_id:path}/release", tags=["pool"])
    async def release_node(node_id: str, who: Caller) -> dict[str, Any]:
        """Lift a node's quarantine (admin)."""
        who.require_admin()
        live = c.nodes.get(node_id)
        await c.nodes.release(node_id)
        return node_public(live)

    @app.post("/api/nodes/{node_id:path}/quarantine", tags=["pool"])
    async def quarantine_node(
        node_id: str, who: Caller, reason: str = "quarantined by an admin"
    ) -> dict[str, Any]:
        """Quarantine a node by hand (admin): it gets no work until released."""
        who.require_admin()
        live = c.nodes.get(node_id)
        await c.nodes.quarantine(node_id, reason[:500])
        return node_public(live)

    @app.delete("/api/nodes/{node_id:path}", tags=["pool"])
    async def remove_node(node_id: str, who: Caller) -> dict[str, Any]:
        """Remove a node (admin): its certificate is refused from now on."""
        who.require_admin()
        await c.nodes.remove(node_id)
        return {"id": node_id, "state": "removed"}
