"""Sharded models as data: a model's blocks, a node's block range, and coverage.

A sharded model is one decoder checkpoint served by several nodes, each holding
a contiguous range of its transformer blocks (Petals-style block ranges). These
types carry no I/O: the scheduler assigns ranges over them and the coordinator
stores and reports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phage.errors import InvalidInput

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MAX_BLOCKS = 4096


@dataclass(frozen=True, slots=True, order=True)
class BlockRange:
    """Blocks ``start`` (inclusive) to ``end`` (exclusive) of a model."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise InvalidInput(
                f"a block range needs 0 <= start < end, got {self.start}:{self.end}", field="blocks"
            )

    def __len__(self) -> int:
        return self.end - self.start

    def __contains__(self, block: object) -> bool:
        return isinstance(block, int) and self.start <= block < self.end

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"

    @classmethod
    def parse(cls, text: str) -> BlockRange:
        """``"START:END"`` (END exclusive), as ``--serve-blocks`` takes it."""
        start, sep, end = text.partition(":")
        if not sep or not start.strip().isdigit() or not end.strip().isdigit():
            raise InvalidInput(
                f"a block range is START:END (END exclusive, e.g. 0:4), got {text!r}", field="blocks"
            )
        return cls(int(start), int(end))


@dataclass(frozen=True, slots=True)
class ShardedModel:
    """A model declared for serving in block ranges."""

    name: str
    checkpoint: str
    """Path (on the nodes) or id of the checkpoint every node loads its blocks from."""
    num_blocks: int
    bytes_per_block: int
    """Memory one block takes on a node (weights plus a share of working memory)."""
    redundancy: int = 1
    """How many nodes should serve each block; more are standbys for failover."""
    edge_bytes: int = 0
    """Memory for the embeddings (first block's node) or final norm and head (last block's node)."""

    def __post_init__(self) -> None:
        if not MODEL_NAME.match(self.name):
            raise InvalidInput(
                "name must be 1-128 characters of letters, digits and ._:/- starting with a letter or digit",
                field="name",
            )
        if not self.checkpoint:
            raise InvalidInput("checkpoint is required", field="checkpoint")
        if not 1 <= self.num_blocks <= MAX_BLOCKS:
            raise InvalidInput(f"num_blocks must be between 1 and {MAX_BLOCKS}", field="num_blocks")
        if self.bytes_per_block <= 0:
            raise InvalidInput("bytes_per_block must be positive", field="bytes_per_block")
        if not 1 <= self.redundancy <= 16:
            raise InvalidInput("redundancy must be between 1 and 16", field="redundancy")
        if self.edge_bytes < 0:
            raise InvalidInput("edge_bytes must be >= 0", field="edge_bytes")

    @property
    def blocks(self) -> BlockRange:
        """Every block of the model."""
        return BlockRange(0, self.num_blocks)

    def check_range(self, blocks: BlockRange, *, field: str = "blocks") -> None:
        """Refuse a range that reaches past the model's last block."""
        if blocks.end > self.num_blocks:
            raise InvalidInput(
                f"block range {blocks} is outside {self.name!r}, which has blocks 0:{self.num_blocks}",
                field=field,
            )

    def bytes_for(self, blocks: BlockRange) -> int:
        """Memory a node needs to hold ``blocks``."""
        edges = (blocks.start == 0) + (blocks.end == self.num_blocks)
        return len(blocks) * self.bytes_per_block + edges * self.edge_bytes

    def blocks_fitting(self, memory_bytes: int) -> int:
        """How many blocks fit in ``memory_bytes`` (edges counted as if the range held both)."""
        return max(0, min(self.num_blocks, (memory_bytes - 2 * self.edge_bytes) // self.bytes_per_block))


@dataclass(frozen=True, slots=True)
class BlockOffer:
    """What a node serving blocks says in each heartbeat: what it wants and what it holds."""

    serve_blocks: str
    """``auto``, a requested range ``START:END``, or "" (serves no blocks)."""
    dataplane_address: str = ""
    memory_bytes: int = 0
    model: str = ""
    """The sharded model whose blocks it holds now ("" while none)."""
    start: int = 0
    end: int = 0
    throughput: float = 0.0
    requested_model: str = ""
    active_sessions: int = 0

    @property
    def requested(self) -> BlockRange | None:
        """The range asked for, or None for ``auto``."""
        return None if self.serve_blocks in ("", "auto") else BlockRange.parse(self.serve_blocks)

    @property
    def held(self) -> BlockRange | None:
        """The blocks loaded now, or None."""
        return BlockRange(self.start, self.end) if self.model and self.end > self.start >= 0 else None


@dataclass(frozen=True, slots=True)
class BlockAssignment:
    """What a node is told to hold (model "" = nothing), or why its offer was refused."""

    model: str = ""
    checkpoint: str = ""
    blocks: BlockRange | None = None
    standby: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class Server:
    """One live node serving a range of a sharded model."""

    node_id: str
    blocks: BlockRange
    throughput: float = 0.0
    """Measured tokens per second through its blocks (0 when not measured yet)."""
    standby: bool = False
    """Holding blocks already served at the target redundancy: a spare for failover."""


@dataclass(frozen=True, slots=True)
class Coverage:
    """Who serves each block of one model, and what that adds up to."""

    model: ShardedModel
    servers: tuple[Server, ...]

    def per_block(self) -> list[int]:
        """The number of servers holding each block."""
        counts = [0] * self.model.num_blocks
        for s in self.servers:
            for b in range(s.blocks.start, min(s.blocks.end, self.model.num_blocks)):
                counts[b] += 1
        return counts

    def gaps(self) -> list[BlockRange]:
        """Maximal runs of blocks no server holds."""
        out: list[BlockRange] = []
        start: int | None = None
        for b, n in enumerate([*self.per_block(), 1]):
            if n == 0 and start is None:
                start = b
            elif n and start is not None:
                out.append(BlockRange(start, b))
                start = None
        return out

    @property
    def covered_blocks(self) -> int:
        """Blocks held by at least one server."""
        return sum(1 for n in self.per_block() if n)

    @property
    def coverage_percent(self) -> float:
        """Share of blocks served, in percent."""
        return round(100.0 * self.covered_blocks / self.model.num_blocks, 2)

    @property
    def ready(self) -> bool:
        """True when a chain covering every block exists (``ready_for_inference``)."""
        return self.covered_blocks == self.model.num_blocks
