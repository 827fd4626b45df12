"""A node's part in sharded models: hold the block range the coordinator assigns, serve it to chains.

The node offers blocks in each heartbeat (``--serve-blocks auto`` or a range it asks
for, and the memory it gives them); the coordinator answers with a range. Loading
happens in the background and only then does the heartbeat report the range as held,
so a model counts as covered only when a chain could really run through it. Peers
reach the blocks as the ``stage`` service of the node's data-plane listener
(:mod:`phage.node.listener`): directly over mutual TLS, or through the coordinator's
relay for a node that cannot accept connections.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from phage.domain.blocks import BlockAssignment, BlockOffer, BlockRange
from phage.errors import PhageError
from phage.node import faults
from phage.node.listener import NodeListener
from phage.node.stage import StageModel
from phage.node.stage_service import StageHandler

log = logging.getLogger("phage.node.blocks")


class BlockServer:
    """The stages this node holds, served as the ``stage`` service of its listener."""

    def __init__(
        self, serve_blocks: str, memory_bytes: int, listener: NodeListener, *, requested_model: str = ""
    ) -> None:
        if serve_blocks != "auto":
            BlockRange.parse(serve_blocks)  # refuse a malformed range before joining
        self.serve_blocks = serve_blocks
        self.memory_bytes = memory_bytes
        self.listener = listener
        self.requested_model = requested_model
        self.stages: dict[str, StageModel] = {}
        self.handler = StageHandler(
            self.stages,
            dial=listener.dial,
            delay_s=faults.stage_delay_s(),
            output_hook=faults.activation_noise(),
        )
        listener.handlers["stage"] = self.handler
        self._want: BlockAssignment = BlockAssignment()
        self._loading: asyncio.Task[None] | None = None
        self.error = ""

    async def stop(self) -> None:
        """Stop loading."""
        if self._loading is not None:
            self._loading.cancel()

    @property
    def address(self) -> str:
        """Where peers reach this node's blocks (``relay``: through the coordinator)."""
        return self.listener.address

    def offer(self) -> BlockOffer:
        """What the next heartbeat says: what this node wants and what it holds."""
        held = next(iter(self.stages.items()), None)
        return BlockOffer(
            serve_blocks=self.serve_blocks,
            dataplane_address=self.address,
            memory_bytes=self.memory_bytes,
            model=held[0] if held else "",
            start=held[1].blocks.start if held else 0,
            end=held[1].blocks.end if held else 0,
            throughput=self.handler.throughput,
            requested_model=self.requested_model,
            active_sessions=self.handler.open_sessions,
        )

    def apply(self, assignment: BlockAssignment) -> None:
        """Follow the coordinator's answer: load the assigned range (in the background) or drop blocks."""
        if assignment.error:
            if assignment.error != self.error:
                log.warning("the coordinator refused this node's blocks: %s", assignment.error)
            self.error = assignment.error
        if assignment.model == self._want.model and assignment.blocks == self._want.blocks:
            return
        self._want = assignment
        if self._loading is not None:
            self._loading.cancel()
        if not assignment.model or assignment.blocks is None:
            self.stages.clear()
            return
        self._loading = asyncio.create_task(self._load(assignment), name="phage-node-load-blocks")

    async def _load(self, a: BlockAssignment) -> None:
        assert a.blocks is not None
        log.info("loading blocks %s of %s from %s", a.blocks, a.model, a.checkpoint)
        try:
            stage = await asyncio.to_thread(StageModel, Path(a.checkpoint), a.blocks)
        except (PhageError, OSError) as exc:
            self.error = getattr(exc, "message", str(exc))
            log.warning("could not load blocks %s of %s: %s", a.blocks, a.model, self.error)
            return
        self.stages.clear()
        self.stages[a.model] = stage
        log.info("holding blocks %s of %s", a.blocks, a.model)
