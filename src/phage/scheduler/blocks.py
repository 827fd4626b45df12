"""Which blocks of a sharded model a node should serve: pure functions of the coverage.

The rule is Petals': a joining node takes the contiguous run of blocks, as long as
its memory allows, where coverage is weakest — fewest servers on its least-served
block, then fewest in total, then the leftmost. A node may ask for a range; it gets
it if it fits the model and its memory. A node that arrives when every block is
served at the target redundancy still takes the weakest range, as a standby:
it holds the weights, so when a server leaves it closes the gap at once.

:func:`rebalance` moves one node at a time to a gap, choosing a node whose every
block stays served without it and that no live session uses.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from phage.domain.blocks import BlockRange, Server, ShardedModel
from phage.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Placement:
    """A range for a node, and whether it is a standby there."""

    blocks: BlockRange
    standby: bool


@dataclass(frozen=True, slots=True)
class Move:
    """Rebalancing: ``node_id`` should drop its range and serve ``to`` instead."""

    node_id: str
    to: BlockRange


def counts(model: ShardedModel, servers: Collection[Server], *, without: str = "") -> list[int]:
    """Servers per block, leaving out the node ``without``."""
    per = [0] * model.num_blocks
    for s in servers:
        if s.node_id == without:
            continue
        for b in range(s.blocks.start, min(s.blocks.end, model.num_blocks)):
            per[b] += 1
    return per


def weakest_window(per_block: Sequence[int], length: int) -> BlockRange:
    """The run of ``length`` blocks with the lowest minimum coverage, then lowest sum, then leftmost."""
    length = max(1, min(length, len(per_block)))
    best: tuple[int, int, int] | None = None
    for start in range(len(per_block) - length + 1):
        window = per_block[start : start + length]
        key = (min(window), sum(window), start)
        if best is None or key < best:
            best = key
    assert best is not None
    return BlockRange(best[2], best[2] + length)


def place(
    model: ShardedModel,
    servers: Collection[Server],
    memory_bytes: int,
    requested: BlockRange | None = None,
) -> Placement:
    """The range a node with ``memory_bytes`` should serve, given who serves what now.

    Raises :class:`InvalidInput` for a requested range outside the model or too big for
    the node's memory, and when not even one block fits.
    """
    per = counts(model, servers)
    if requested is not None:
        model.check_range(requested, field="serve_blocks")
        need = model.bytes_for(requested)
        if need > memory_bytes:
            raise InvalidInput(
                f"blocks {requested} of {model.name!r} need {need} bytes; this node offers {memory_bytes}",
                field="serve_blocks",
            )
        helps = any(per[b] < model.redundancy for b in range(requested.start, requested.end))
        return Placement(requested, standby=not helps)
    fit = model.blocks_fitting(memory_bytes)
    if fit < 1:
        raise InvalidInput(
            f"one block of {model.name!r} needs {model.bytes_for(BlockRange(0, 1))} bytes "
            f"with its edges; this node offers {memory_bytes}",
            field="model_memory_bytes",
        )
    window = weakest_window(per, fit)
    helps = min(per[window.start : window.end]) < model.redundancy
    return Placement(window, standby=not helps)


def rebalance(
    model: ShardedModel,
    servers: Collection[Server],
    capacity: dict[str, int],
    busy: Collection[str] = (),
) -> Move | None:
    """One move that closes (part of) a gap, or None when there is no gap or nobody can move.

    ``capacity`` is how many blocks each node can hold; ``busy`` are nodes whose blocks
    live sessions use (never asked to drop them). Standbys move first, then the node
    whose blocks are most redundantly served.
    """
    per = counts(model, servers)
    if min(per) > 0:
        return None
    candidates: list[tuple[int, int, str]] = []
    for s in servers:
        if s.node_id in busy or s.node_id not in capacity:
            continue
        without = counts(model, servers, without=s.node_id)
        if min(without[s.blocks.start : s.blocks.end], default=0) < 1:
            continue  # moving it would open a new gap
        spare = min(without[s.blocks.start : s.blocks.end])
        candidates.append((0 if s.standby else 1, -spare, s.node_id))
    for _, _, node_id in sorted(candidates):
        window = weakest_window(counts(model, servers, without=node_id), capacity[node_id])
        if min(per[window.start : window.end]) == 0:
            return Move(node_id, window)
    return None


def chain(
    model: ShardedModel, servers: Sequence[Server], avoid: Collection[str] = (), start: int = 0
) -> list[Server]:
    """Servers that together cover blocks ``start`` to the last in order, fewest hops first; [] when none.

    Prefers non-standby servers and, among equals, higher throughput; ``avoid`` are nodes
    not to use (a node that just failed). ``start`` > 0 routes the rest of a chain after a failure.
    """
    usable = [s for s in servers if s.node_id not in avoid]
    # Breadth-first over block positions: reach[b] = the shortest chain ending exactly at block b.
    reach: dict[int, list[Server]] = {start: []}
    frontier = [start]
    while frontier:
        nxt: list[int] = []
        for pos in frontier:
            options = [s for s in usable if s.blocks.start <= pos < s.blocks.end]
            options.sort(key=lambda s: (s.standby, -s.throughput, s.node_id))
            for s in options:
                end = s.blocks.end
                if end not in reach:
                    reach[end] = [*reach[pos], s]
                    nxt.append(end)
        if model.num_blocks in reach:
            return reach[model.num_blocks]
        frontier = nxt
    return []


def spans(chain_servers: Sequence[Server], start: int = 0) -> list[BlockRange]:
    """The blocks each server of a chain runs: from where the previous ended to its own end.

    A server whose range overlaps the previous one's skips the blocks already run.
    """
    out: list[BlockRange] = []
    pos = start
    for s in chain_servers:
        out.append(BlockRange(pos, s.blocks.end))
        pos = s.blocks.end
    return out
