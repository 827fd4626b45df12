"""Training jobs over HTTP: ``/api/datasets`` and ``/api/networks``.

A dataset is uploaded once and named by its sha256; a training job names it.
Users see their own networks, admins every one. A completed network answers
``POST /api/networks/{id}/forward`` and downloads as one safetensors file.
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response

from phage.api.requests import NetworkCreate, NetworkForward
from phage.coordinator.bodies import validated
from phage.coordinator.keys import Principal
from phage.coordinator.training import TrainingService
from phage.domain.networks import NetworkRecord, NetworkState, TrainingConfig, VNodeState
from phage.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from phage.training.spec import load_spec_text, parse_spec

MAX_DATASET_BYTES = 256 * 1024 * 1024
FRAME_PATHS = ("direct", "relayed", "local")


def network_view(
    rec: NetworkRecord,
    vnodes: list[VNodeState],
    rates: dict[str, float],
    frames: dict[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """A network as the API shows it: the job, its graph, and each VNode's placement and progress."""
    net = parse_spec(rec.spec)
    by_id = {v.vnode_id: v for v in vnodes}
    return {
        "id": rec.id,
        "name": rec.name,
        "state": rec.state.value,
        "owner": rec.owner,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "dataset": rec.dataset,
        "training": rec.config.to_dict(),
        "result": rec.result,
        "error": rec.error,
        "output": net.output,
        "vnodes": [
            {
                "id": v.id,
                "inputs": list(v.inputs),
                "blocks": [b.type for b in v.blocks],
                "out_shape": list(v.out_shape),
                "node_id": by_id[v.id].node_id if v.id in by_id else "",
                "step": by_id[v.id].step if v.id in by_id else 0,
                "last_batch": by_id[v.id].last_batch if v.id in by_id else -1,
                "loss": by_id[v.id].history[-1][1] if v.id in by_id and by_id[v.id].history else None,
                "samples_per_s": rates.get(v.id, 0.0),
                # how this VNode's outputs travelled: node to node, through the relay, in memory
                "frames": dict(zip(FRAME_PATHS, (frames or {}).get(v.id, (0, 0, 0)), strict=True)),
                "checkpoint": by_id[v.id].checkpoint if v.id in by_id else "",
                "done": by_id[v.id].done if v.id in by_id else False,
                "updated_at": by_id[v.id].updated_at if v.id in by_id else 0.0,
                "history": [list(p) for p in by_id[v.id].history] if v.id in by_id else [],
            }
            for v in net.vnodes
        ],
    }


def install_training(
    app: FastAPI,
    training: TrainingService,
    principal: Callable[[Request], Coroutine[Any, Any, Principal]],
    read_json: Callable[[Request], Awaitable[Any]],
) -> None:
    """Add the dataset and network routes."""
    Caller = Annotated[Principal, Depends(principal)]
    trained: dict[str, Any] = {}  # network id -> loaded VNode runtimes (completed networks only)

    async def visible(network_id: str, who: Principal) -> tuple[NetworkRecord, list[VNodeState]]:
        rec, vnodes = await training.get(network_id)
        if not who.is_admin and rec.owner != who.key_id:
            raise NotFound(f"no network {network_id!r}", field="id")
        return rec, vnodes

    async def runtimes(network_id: str, who: Principal) -> tuple[Any, Any]:
        rec, vnodes = await visible(network_id, who)
        if rec.state is not NetworkState.COMPLETED:
            raise Conflict(f"network {network_id} is {rec.state.value}, not completed", field="id")
        try:
            from phage.coordinator import training_eval
        except ImportError:
            raise Unavailable("serving a trained network needs phage[training] on the coordinator") from None
        net = parse_spec(rec.spec)
        if network_id not in trained:
            blobs = {v.vnode_id: training.blobs.read(v.checkpoint) for v in vnodes}
            trained[network_id] = await asyncio.to_thread(training_eval.load_runtimes, net, blobs)
        return net, trained[network_id]

    @app.post("/api/datasets", status_code=201, tags=["training"])
    async def upload_dataset(request: Request, who: Caller) -> dict[str, Any]:
        """Upload a dataset once (the raw bytes of an ``.npz`` or safetensors file with ``x`` and ``y``)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_DATASET_BYTES:
            raise PayloadTooLarge(f"a dataset is at most {MAX_DATASET_BYTES} bytes", field="dataset")
        writer = training.blobs.writer(limit=MAX_DATASET_BYTES)
        h = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_DATASET_BYTES:
                writer.abort()
                raise PayloadTooLarge(f"a dataset is at most {MAX_DATASET_BYTES} bytes", field="dataset")
            h.update(chunk)
            writer.write(chunk)
        if size == 0:
            writer.abort()
            raise InvalidInput("the dataset is empty", field="dataset")
        digest = h.hexdigest()
        writer.commit(digest)
        return {"sha256": digest, "size": size}

    @app.post("/api/networks", status_code=201, tags=["training"])
    async def submit_network(request: Request, who: Caller) -> dict[str, Any]:
        """Train a network: ``{"spec": {...} or YAML text, "dataset": sha256, "training": {...}}``."""
        body = validated(NetworkCreate, await read_json(request))
        spec = dict(load_spec_text(body.spec).raw) if isinstance(body.spec, str) else body.spec
        config = TrainingConfig.parse(body.training.model_dump(exclude_unset=True))
        rec = await training.submit(spec, body.dataset, config, who.key_id)
        rec, vnodes = await training.get(rec.id)
        return network_view(rec, vnodes, {})

    @app.get("/api/training/hosts", tags=["training"])
    async def hosts(who: Caller) -> dict[str, Any]:
        """Nodes listening for training orders now (those with the ``training`` extra)."""
        return {"nodes": sorted(training.subscribers)}

    @app.get("/api/networks", tags=["training"])
    async def list_networks(who: Caller) -> dict[str, Any]:
        """Training jobs (yours; every one for admins), newest first."""
        recs = await training.store.list_networks(limit=200)
        return {
            "networks": [
                {
                    "id": r.id,
                    "name": r.name,
                    "state": r.state.value,
                    "created_at": r.created_at,
                    "result": r.result,
                }
                for r in recs
                if who.is_admin or r.owner == who.key_id
            ]
        }

    @app.get("/api/networks/{network_id}", tags=["training"])
    async def get_network(network_id: str, who: Caller) -> dict[str, Any]:
        """A training job: its VNode graph, where each VNode runs, its progress and loss curve."""
        rec, vnodes = await visible(network_id, who)
        return network_view(rec, vnodes, training.rates(network_id), training.frames(network_id))

    @app.delete("/api/networks/{network_id}", tags=["training"])
    async def cancel_network(network_id: str, who: Caller) -> dict[str, Any]:
        """Stop a training job."""
        await visible(network_id, who)
        rec = await training.cancel(network_id)
        return {"id": rec.id, "state": rec.state.value}

    @app.post("/api/networks/{network_id}/forward", tags=["training"])
    async def forward(network_id: str, request: Request, who: Caller) -> dict[str, Any]:
        """Run a trained network: ``{"inputs": [[...], ...]}`` → logits and classes."""
        body = validated(NetworkForward, await read_json(request))
        net, rts = await runtimes(network_id, who)
        from phage.coordinator import training_eval

        return await asyncio.to_thread(training_eval.forward, net, rts, body.inputs)

    @app.get("/api/networks/{network_id}/weights", tags=["training"])
    async def weights(network_id: str, who: Caller) -> Response:
        """The trained network as one safetensors file (its spec in the metadata)."""
        net, rts = await runtimes(network_id, who)
        from phage.coordinator import training_eval

        data = await asyncio.to_thread(training_eval.weights_file, net, rts)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{network_id}.safetensors"'},
        )
