"""Admin routes for admission: approve, reject, drain and cap nodes (policy in ``admission.py``).

``POST /api/nodes/{id}/approve`` (``?trusted=false``, ``?max_concurrent_jobs=N``), ``/reject``,
``/drain``, ``/undrain``, and ``POST /api/nodes/{id}`` with a JSON body of the fields to change.
Every route needs an admin API key and answers with the node as ``GET /api/nodes`` shows it.

The generic ``POST /api/nodes/{id}`` is registered after every ``/api/nodes/{id}/<action>`` route:
Starlette takes the first matching route, and a node id may itself contain ``/`` (base64).
"""
# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.

from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from phage.coordinator.admission import MAX_JOBS_LIMIT
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.views import node_public


class NodeUpdate(BaseModel):
    """Fields an admin may change on a node; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=MAX_JOBS_LIMIT)
    """Cap on its concurrent assignments; null removes the cap."""
    draining: bool | None = None
    trusted: bool | None = None


def install_admission_api(app: FastAPI, coordinator: Coordinator) -> None:
    """Add the admission admin routes to the coordinator's HTTP app."""
    c = coordinator
    adm = c.admission

    async def admin(request: Request) -> Principal:
        who = await c.keys.authenticate(request.headers.get("authorization"))
        who.require_admin()
        return who

    @app.post("/api/nodes/{node_id:path}/approve", tags=["pool"])
    async def approve_node(
        node_id: str,
        trusted: bool = True,
        max_concurrent_jobs: int | None = Query(default=None, ge=1, le=MAX_JOBS_LIMIT),
        _: Principal = Depends(admin),
    ) -> dict[str, Any]:
        """Let a pending node work, trusted (default) or untrusted; optionally cap its concurrency."""
        return node_public(await adm.approve(node_id, trusted=trusted, max_jobs=max_concurrent_jobs))

    @app.post("/api/nodes/{node_id:path}/reject", tags=["pool"])
    async def reject_node(node_id: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        """Refuse a node for good: it can never rejoin with this identity."""
        return node_public(await adm.reject(node_id))

    @app.post("/api/nodes/{node_id:path}/drain", tags=["pool"])
    async def drain_node(node_id: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        """The node finishes what it holds and takes no more work."""
        return node_public(await adm.set_draining(node_id, True))

    @app.post("/api/nodes/{node_id:path}/undrain", tags=["pool"])
    async def undrain_node(node_id: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        """The node takes work again."""
        return node_public(await adm.set_draining(node_id, False))

    @app.post("/api/nodes/{node_id:path}", tags=["pool"])
    async def update_node(node_id: str, update: NodeUpdate, _: Principal = Depends(admin)) -> dict[str, Any]:
        """Change a node's concurrency cap, drain or trust."""
        live = adm.get(node_id)
        if "max_concurrent_jobs" in update.model_fields_set:
            live = await adm.set_max_jobs(node_id, update.max_concurrent_jobs)
        if update.draining is not None:
            live = await adm.set_draining(node_id, update.draining)
        if update.trusted is not None:
            live = await adm.set_trusted(node_id, update.trusted)
        return node_public(live)
