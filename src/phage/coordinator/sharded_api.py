"""HTTP routes for sharded models: declare, list, coverage, and the Petals-coordinator-compatible read API.

``/api/models/sharded`` and ``/api/models/{name}/coverage`` are phage's own;
``/network/info``, ``/network/health``, ``/network/stats``, ``/workers`` and
``/usage/recent`` answer in the field names of the community Petals coordinator,
so its dashboards read a phage pool. Every route needs an API key; declaring and
deleting need an admin key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from phage.coordinator.keys import Principal
from phage.coordinator.sharded import ShardedModels, UsageLog
from phage.domain.blocks import Coverage, ShardedModel
from phage.errors import NotFound

TAG = "sharded models"


class ShardedModelCreate(BaseModel):
    """The body of ``POST /api/models/sharded``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    checkpoint: str = Field(min_length=1, max_length=4096)
    num_blocks: int = Field(ge=1, le=4096)
    bytes_per_block: int = Field(ge=1)
    redundancy: int = Field(default=1, ge=1, le=16)
    edge_bytes: int = Field(default=0, ge=0)


def coverage_view(cov: Coverage) -> dict[str, Any]:
    """A model's coverage as the API shows it."""
    per = cov.per_block()
    return {
        "model": cov.model.name,
        "num_blocks": cov.model.num_blocks,
        "redundancy": cov.model.redundancy,
        "coverage_percent": cov.coverage_percent,
        "ready_for_inference": cov.ready,
        "gaps": [str(g) for g in cov.gaps()],
        "blocks": [
            {
                "block": b,
                "servers": [s.node_id for s in cov.servers if b in s.blocks],
                "throughput": round(sum(s.throughput for s in cov.servers if b in s.blocks), 2),
            }
            for b in range(cov.model.num_blocks)
        ],
        "servers": [
            {
                "node_id": s.node_id,
                "blocks": str(s.blocks),
                "standby": s.standby,
                "throughput": round(s.throughput, 2),
            }
            for s in cov.servers
        ],
        "per_block": per,
    }


def install_sharded_api(
    app: FastAPI,
    sharded: ShardedModels,
    authenticate: Callable[[str | None], Awaitable[Principal]],
    usage: UsageLog,
    node_name: Callable[[str], str],
) -> None:
    """Add the sharded-model routes; ``node_name`` gives a node's display name (its nickname)."""

    async def caller(request: Request) -> Principal:
        return await authenticate(request.headers.get("authorization"))

    async def admin(request: Request) -> Principal:
        who = await caller(request)
        who.require_admin()
        return who

    def pick(model: str | None) -> ShardedModel:
        if model:
            return sharded.get(model)
        models = sharded.models()
        if not models:
            raise NotFound("no sharded model is declared", field="model")
        return models[0]

    @app.post("/api/models/sharded", status_code=201, tags=[TAG])
    async def declare(body: ShardedModelCreate, _: Principal = Depends(admin)) -> dict[str, Any]:
        """Declare a model to serve in block ranges across nodes."""
        model = sharded.declare(ShardedModel(**body.model_dump()))
        return {**asdict(model), "coverage": coverage_view(sharded.coverage(model.name))}

    @app.get("/api/models/sharded", tags=[TAG])
    async def list_models(_: Principal = Depends(caller)) -> dict[str, Any]:
        """Every sharded model with its coverage."""
        return {
            "models": [
                {**asdict(m), "coverage": coverage_view(sharded.coverage(m.name))} for m in sharded.models()
            ]
        }

    @app.delete("/api/models/sharded/{name:path}", tags=[TAG])
    async def remove(name: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        """Stop serving a sharded model; its nodes drop their blocks."""
        sharded.remove(name)
        return {"deleted": name}

    @app.get("/api/models/{name:path}/coverage", tags=[TAG])
    async def coverage(name: str, _: Principal = Depends(caller)) -> dict[str, Any]:
        """Which live nodes hold each block of ``name``, the gaps, and whether a chain can run."""
        return coverage_view(sharded.coverage(name))

    @app.get("/network/info", tags=[TAG])
    async def network_info(_: Principal = Depends(caller), model: str | None = None) -> dict[str, Any]:
        """The Petals coordinator's network summary for one sharded model (the first by default)."""
        m = pick(model)
        cov = sharded.coverage(m.name)
        offers = sharded.offers()
        return {
            "model_name": m.name,
            "total_layers": m.num_blocks,
            "bootstrap_peers": sorted({offers[s.node_id][0].dataplane_address for s in cov.servers}),
            "online_workers": len(cov.servers),
            "coverage_percent": cov.coverage_percent,
            "ready_for_inference": cov.ready,
            "missing_layers": [str(g) for g in cov.gaps()],
        }

    @app.get("/network/health", tags=[TAG])
    async def network_health(_: Principal = Depends(caller), model: str | None = None) -> dict[str, Any]:
        """Coverage block by block."""
        cov = sharded.coverage(pick(model).name)
        view = coverage_view(cov)
        return {
            "model_name": cov.model.name,
            "healthy": cov.ready,
            "coverage_percent": cov.coverage_percent,
            "ready_for_inference": cov.ready,
            "layers": [
                {"layer": b["block"], "workers": len(b["servers"]), "worker_ids": b["servers"]}
                for b in view["blocks"]
            ],
            "gaps": view["gaps"],
        }

    @app.get("/network/stats", tags=[TAG])
    async def network_stats(_: Principal = Depends(caller), model: str | None = None) -> dict[str, Any]:
        """Totals: workers, coverage, requests and tokens served."""
        cov = sharded.coverage(pick(model).name)
        offers = sharded.offers()
        return {
            "model_name": cov.model.name,
            "total_workers": len(offers),
            "online_workers": len(cov.servers),
            "idle_workers": sum(1 for s in cov.servers if s.standby),
            "total_layers": cov.model.num_blocks,
            "coverage_percent": cov.coverage_percent,
            "ready_for_inference": cov.ready,
            "total_requests": usage.requests,
            "total_tokens": usage.tokens,
        }

    @app.get("/workers", tags=[TAG])
    async def workers(_: Principal = Depends(caller)) -> list[dict[str, Any]]:
        """Every node serving blocks, with its range (``layers_end`` exclusive, as block ranges are)."""
        out = []
        for node_id, (offer, assigned, since) in sorted(sharded.offers().items()):
            held = offer.held
            out.append(
                {
                    "worker_id": node_id,
                    "nickname": node_name(node_id),
                    "model_name": offer.model or assigned.model,
                    "layers_start": held.start if held else None,
                    "layers_end": held.end if held else None,
                    "assigned_start": assigned.blocks.start if assigned.blocks else None,
                    "assigned_end": assigned.blocks.end if assigned.blocks else None,
                    "is_idle": assigned.standby,
                    "status": "serving" if held else "error" if assigned.error else "loading",
                    "error": assigned.error or None,
                    "throughput": round(offer.throughput, 2),
                    "active_sessions": offer.active_sessions,
                    "address": offer.dataplane_address,
                    "serving_since": since,
                }
            )
        return out

    @app.get("/api/models/sharded/usage", tags=[TAG])
    async def usage_recent(
        _: Principal = Depends(caller), limit: int = Query(default=50, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        """The newest sharded inferences: who, how many tokens, through which chain of nodes.

        (``/usage/recent``, the Petals-coordinator-compatible log of every metered request, names
        one node per request; this one names every node of each chain.)
        """
        return [
            {**asdict(e), "worker_ids": list(e.worker_ids), "age_s": round(time.time() - e.timestamp, 3)}
            for e in usage.recent(limit)
        ]
