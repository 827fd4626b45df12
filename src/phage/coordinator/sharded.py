"""Sharded models on the coordinator: declarations, who serves which blocks, coverage, routes.

Nodes that serve blocks say so in each heartbeat (a :class:`BlockOffer`); this
service answers with the range each should hold (Petals' rule, in
``scheduler/blocks.py``) and keeps two views of every model:

- **assigned** ranges — what nodes were told to load; placement counts these, so
  nodes joining at the same moment spread out instead of piling onto one gap;
- **held** ranges — what nodes report they have loaded; coverage, readiness and
  chains use only these, so ``ready_for_inference`` means a chain can run now.

A node silent for a lease (the heartbeat interval × missed heartbeats) stops
counting; the next heartbeat of a node that can close the gap it left moves it
there (:func:`phage.scheduler.blocks.rebalance`), unless live sessions use it.
Declarations are kept in a JSON file in the data directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from phage.dataplane.chain import Hop
from phage.dataplane.checks import Verifier
from phage.domain.blocks import BlockAssignment as Assignment
from phage.domain.blocks import BlockOffer, BlockRange, Coverage, Server, ShardedModel
from phage.errors import Conflict, InvalidInput, NotFound, PhageError, Unavailable
from phage.scheduler.blocks import chain, place, rebalance

log = logging.getLogger("phage.sharded")


@dataclass
class _Node:
    offer: BlockOffer
    seen: float
    assigned: Assignment = field(default_factory=Assignment)
    since: float = field(default_factory=time.time)


def checkpoint_blocks_or_none(checkpoint: str) -> int | None:
    """The block count of a checkpoint readable here (its config.json), else None (checked by nodes)."""
    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        return None
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{config} has no num_hidden_layers", field="checkpoint") from exc


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One sharded inference, as the Petals coordinator's usage log records it."""

    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    worker_ids: tuple[str, ...]
    timestamp: float


class UsageLog:
    """The most recent sharded inferences (in memory; metering proper is in the store)."""

    def __init__(self, keep: int = 1000) -> None:
        self._entries: deque[UsageEntry] = deque(maxlen=keep)
        self.requests = 0
        self.tokens = 0

    def add(self, entry: UsageEntry) -> None:
        """Record one finished inference."""
        self._entries.append(entry)
        self.requests += 1
        self.tokens += entry.prompt_tokens + entry.completion_tokens

    def recent(self, limit: int) -> list[UsageEntry]:
        """The newest ``limit`` entries, newest first."""
        return list(self._entries)[::-1][:limit]


class ShardedModels:
    """The registry and assignment service; one per coordinator."""

    def __init__(
        self,
        path: Path,
        *,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        allowed: Callable[[str], bool] = lambda _node: True,
    ) -> None:
        self.path = path
        self.lease_s = lease_s
        self.clock = clock
        self.allowed = allowed
        """Whether a node may serve now (admitted, not quarantined)."""
        self._models: dict[str, ShardedModel] = {}
        self._nodes: dict[str, _Node] = {}

    def load(self) -> None:
        """Read the declarations kept in the data directory."""
        if self.path.is_file():
            for item in json.loads(self.path.read_text()):
                m = ShardedModel(**item)
                self._models[m.name] = m

    # ---- declarations ------------------------------------------------------

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(m) for m in self._models.values()], indent=1))
        os.replace(tmp, self.path)

    def declare(self, model: ShardedModel) -> ShardedModel:
        """Add a model; its blocks must be exactly the checkpoint's when the checkpoint is readable here."""
        if model.name in self._models:
            raise Conflict(f"a sharded model named {model.name!r} exists; delete it first")
        found = checkpoint_blocks_or_none(model.checkpoint)
        if found is not None and found != model.num_blocks:
            raise InvalidInput(
                f"num_blocks is {model.num_blocks} but the checkpoint {model.checkpoint} has {found} blocks: "
                "the declared blocks must cover the checkpoint exactly",
                field="num_blocks",
            )
        self._models[model.name] = model
        self._save()
        return model

    def remove(self, name: str) -> None:
        """Forget a model; its nodes are told to drop their blocks at their next heartbeat."""
        self.get(name)
        del self._models[name]
        self._save()

    def get(self, name: str) -> ShardedModel:
        """One declared model."""
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"no sharded model {name!r}", field="model")
        return model

    def has(self, name: str) -> bool:
        """True when ``name`` is a declared sharded model."""
        return name in self._models

    def models(self) -> list[ShardedModel]:
        """Every declared model, by name."""
        return sorted(self._models.values(), key=lambda m: m.name)

    # ---- nodes ---------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for node_id in [n for n, s in self._nodes.items() if now - s.seen > self.lease_s]:
            log.info("node %s stopped serving blocks (silent)", node_id[:12])
            del self._nodes[node_id]

    def _live(self) -> dict[str, _Node]:
        self._expire(self.clock())
        return {n: s for n, s in self._nodes.items() if self.allowed(n)}

    def assigned(self, name: str, *, without: str = "") -> list[Server]:
        """Servers by the ranges they were assigned (placement's view)."""
        return [
            Server(n, s.assigned.blocks, s.offer.throughput, s.assigned.standby)
            for n, s in self._live().items()
            if n != without and s.assigned.model == name and s.assigned.blocks is not None
        ]

    def held(self, name: str) -> list[Server]:
        """Servers by the ranges they report loaded (coverage's and routing's view)."""
        return [
            Server(n, s.offer.held, s.offer.throughput, s.assigned.standby)
            for n, s in self._live().items()
            if s.offer.model == name and s.offer.held is not None
        ]

    def leave(self, node_id: str) -> None:
        """A node left (removed, quarantined, stopped): it serves nothing from now."""
        self._nodes.pop(node_id, None)

    def heartbeat(self, node_id: str, offer: BlockOffer) -> Assignment:
        """Record what a node holds and answer with the range it should hold."""
        now = self.clock()
        self._expire(now)
        if not offer.serve_blocks:
            self._nodes.pop(node_id, None)
            return Assignment()
        state = self._nodes.get(node_id)
        if state is None:
            state = self._nodes[node_id] = _Node(offer, now)
        state.offer, state.seen = offer, now
        if not self.allowed(node_id):
            state.assigned = Assignment()
            return state.assigned
        current = state.assigned
        if current.model and (current.model not in self._models or current.error):
            current = Assignment()
        try:
            if not current.model:
                current = self._choose(node_id, offer)
            elif offer.serve_blocks == "auto":
                current = self._maybe_move(node_id, current)
        except PhageError as exc:
            current = Assignment(error=exc.message)
        state.assigned = current
        return current

    def _choose(self, node_id: str, offer: BlockOffer) -> Assignment:
        names = [offer.requested_model] if offer.requested_model else list(self._models)
        if not names:
            return Assignment()
        if offer.requested_model and offer.requested_model not in self._models:
            return Assignment(error=f"no sharded model {offer.requested_model!r} is declared")
        errors: list[str] = []
        options: list[tuple[tuple[int, int], Assignment]] = []
        for name in names:
            model = self._models[name]
            servers = self.assigned(name, without=node_id)
            try:
                p = place(model, servers, offer.memory_bytes, offer.requested)
            except PhageError as exc:
                errors.append(f"{name}: {exc.message}")
                continue
            per = Coverage(model, tuple(servers)).per_block()
            weakest = min(per[p.blocks.start : p.blocks.end])
            options.append(((p.standby, weakest), Assignment(name, model.checkpoint, p.blocks, p.standby)))
        if not options:
            return Assignment(error="; ".join(errors))
        # The model that needs this node most: one it helps, then the thinnest coverage.
        return min(options, key=lambda o: o[0])[1]

    def _maybe_move(self, node_id: str, current: Assignment) -> Assignment:
        model = self._models[current.model]
        servers = self.assigned(model.name)
        capacity = {
            s.node_id: model.blocks_fitting(self._nodes[s.node_id].offer.memory_bytes) for s in servers
        }
        busy = {n for n, s in self._live().items() if s.offer.active_sessions > 0}
        move = rebalance(model, servers, capacity, busy)
        if move is None or move.node_id != node_id:
            if current.standby and current.blocks and not self._others_cover(model, node_id, current.blocks):
                return replace(current, standby=False)  # the blocks it stood by for lost their server
            return current
        log.info("moving node %s of %s to blocks %s", node_id[:12], model.name, move.to)
        return Assignment(model.name, model.checkpoint, move.to, standby=False)

    def _others_cover(self, model: ShardedModel, node_id: str, blocks: BlockRange) -> bool:
        others = Coverage(model, tuple(self.assigned(model.name, without=node_id))).per_block()
        return min(others[blocks.start : blocks.end]) >= model.redundancy

    # ---- reading -----------------------------------------------------------------

    def coverage(self, name: str) -> Coverage:
        """Who holds each block now."""
        return Coverage(self.get(name), tuple(self.held(name)))

    def offers(self) -> dict[str, tuple[BlockOffer, Assignment, float]]:
        """Every serving node's last offer, its assignment, and when it started serving."""
        return {n: (s.offer, s.assigned, s.since) for n, s in self._live().items()}

    def require_ready(self, name: str) -> ShardedModel:
        """The model, or 503 naming the blocks nobody holds."""
        cov = self.coverage(name)
        if not cov.ready:
            gaps = ", ".join(str(g) for g in cov.gaps())
            raise Unavailable(
                f"the sharded model {name!r} is not ready: no live node holds blocks {gaps} "
                f"(coverage {cov.coverage_percent}%)",
                field="model",
            )
        return cov.model

    def find_verifier(
        self,
        name: str,
        blocks: BlockRange,
        start: int,
        avoid: Collection[str],
        trusted: Callable[[str], bool],
    ) -> Verifier | None:
        """A live node holding blocks ``start``..``blocks.end`` of ``name``, trusted first, not ``avoid``."""
        fits = [
            s
            for s in self.held(name)
            if s.node_id not in avoid and s.blocks.start <= start and s.blocks.end == blocks.end
        ]
        if not fits:
            return None
        best = min(fits, key=lambda s: (not trusted(s.node_id), -s.throughput, s.node_id))
        return Verifier(best.node_id, self._nodes[best.node_id].offer.dataplane_address, best.blocks)

    async def route(self, name: str, start: int, avoid: Collection[str]) -> list[Hop]:
        """A chain of live nodes holding blocks ``start``… of ``name``, in order."""
        model = self.get(name)
        servers = self.held(name)
        address = {n: s.offer.dataplane_address for n, s in self._live().items()}
        hops: list[Hop] = []
        pos = start
        for s in chain(model, servers, avoid=avoid, start=start):
            hops.append(Hop(s.node_id, address[s.node_id], s.blocks, pos))
            pos = s.blocks.end
        return hops
