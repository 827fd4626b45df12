"""Routes for approved workloads: list, approve, revoke, and the digest of a task before submitting it.

``GET /api/workloads`` (any key: a user may see what is approved), ``POST /api/workloads`` and
``DELETE /api/workloads/{digest}`` (admin), ``POST /api/workloads/digest`` (any key: the digest a
task body would have, to send an admin for approval). Policy in ``workloads.py``.
"""
# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.

from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from phage.coordinator.bodies import parse_json, read_body
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.requests import parse_task_request
from phage.coordinator.workloads import request_digest


class ApproveWorkload(BaseModel):
    """An approval to add."""

    model_config = ConfigDict(extra="forbid")

    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    """The workload's digest, as a refusal or ``POST /api/workloads/digest`` gives it."""
    name: str = Field(default="", max_length=200)
    """What it is, for people reading the list."""


def install_workloads_api(
    app: FastAPI,
    c: Coordinator,
    principal: Callable[[Request], Coroutine[Any, Any, Principal]],
) -> None:
    """Add the approved-workload routes."""
    Caller = Annotated[Principal, Depends(principal)]

    @app.get("/api/workloads", tags=["workloads"])
    async def list_workloads(who: Caller) -> dict[str, Any]:
        """Approved workloads, and whether the pool runs only those."""
        return {
            "enforced": c.workloads.enforced,
            "workloads": [asdict(a) for a in c.workloads.list()],
        }

    @app.post("/api/workloads", status_code=201, tags=["workloads"])
    async def approve_workload(body: ApproveWorkload, who: Caller) -> dict[str, Any]:
        """Approve a workload (admin)."""
        who.require_admin()
        return asdict(c.workloads.approve(body.digest, body.name, who.key_id))

    @app.delete("/api/workloads/{digest}", tags=["workloads"])
    async def revoke_workload(digest: str, who: Caller) -> dict[str, Any]:
        """Withdraw an approval (admin); queued tasks of that workload still run."""
        who.require_admin()
        c.workloads.revoke(digest)
        return {"digest": digest, "approved": False}

    @app.post("/api/workloads/digest", tags=["workloads"])
    async def digest_of(request: Request, who: Caller) -> dict[str, Any]:
        """The workload digest a task body (as for ``POST /api/tasks``) would have; nothing is submitted."""
        body = parse_json(await read_body(request, c.settings.max_request_bytes))
        req = parse_task_request(
            body,
            max_workspace_bytes=c.settings.max_workspace_bytes,
            default_max_attempts=c.settings.default_max_attempts,
            max_count=c.settings.max_batch_submit,
        )
        digest = request_digest(req)
        return {
            "digest": digest,
            "approved": digest is None or digest in {a.digest for a in c.workloads.list()},
        }
