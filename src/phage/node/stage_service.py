"""The ``stage`` service on the data plane: run this node's blocks for a peer's session.

One conversation is one session: its attention cache is created by the first
``forward`` and dropped when the stream ends, so a caller that hangs up or dies
frees the memory. A ``forward`` frame may carry several input chunks, run in
order with one output each — how a caller replays a session's history onto a
replacement node after a failure, in the same chunks as the first time, which
rebuilds the cache exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from phage.dataplane import tensor_from_pb, tensor_to_pb
from phage.errors import Conflict, InvalidInput, NotFound
from phage.node.stage import StageModel
from phage.protocol.v1 import dataplane_pb2 as dp

SERVICE = "stage"
MAX_CHUNKS = 4096
INLINE_POSITIONS = 1
"""A lone session's steps of at most this many positions (decode steps) run without a thread hand-off."""

OutputHook = Callable[[Any], Any]
"""Applied to every output a stage sends (fault injection for tests: node/faults.py)."""


class StageHandler:
    """Serves forward passes through the stages (one per sharded model) this node holds."""

    def __init__(
        self, stages: Mapping[str, StageModel], *, output_hook: OutputHook | None = None, delay_s: float = 0.0
    ) -> None:
        self.stages = stages
        self.output_hook = output_hook
        self.delay_s = delay_s
        """Test hook: sleep this long per step (node/faults.py), so a test can act mid-generation."""
        self.open_sessions = 0
        """Conversations open now (a node whose blocks sessions use is not moved)."""
        self.running = 0
        """Steps computing in threads now."""
        self.throughput = 0.0
        """Tokens per second through this node's blocks, a moving average of measured steps."""

    def open(self, peer_node_id: str) -> _StageConversation:
        """A new session, owned by ``peer_node_id``."""
        self.open_sessions += 1
        return _StageConversation(self, f"{peer_node_id}/{uuid.uuid4().hex}")


def _positions(x: Any) -> int:
    return int(x.shape[0] if x.dim() == 1 else x.shape[1])


class _StageConversation:
    def __init__(self, handler: StageHandler, session: str) -> None:
        self.handler = handler
        self.session = session
        self.used: set[str] = set()

    def _stage(self, frame: dp.Frame) -> StageModel:
        model = frame.strings.get("model", "")
        stage = self.handler.stages.get(model)
        if stage is None:
            raise NotFound(f"this node serves no blocks of {model!r}", field="model")
        end = frame.ints.get("end")
        if end is not None and end != stage.blocks.end:
            raise Conflict(f"this node serves blocks {stage.blocks} of {model!r}, not up to {end}")
        return stage

    async def handle(self, frame: dp.Frame) -> dp.Frame:
        """Run ``forward``: every input chunk in order through this node's blocks."""
        if frame.op != "forward":
            raise InvalidInput(f"the stage service has no operation {frame.op!r}", field="op")
        stage = self._stage(frame)
        if not 1 <= len(frame.tensors) <= MAX_CHUNKS:
            raise InvalidInput(f"a forward carries 1 to {MAX_CHUNKS} input chunks", field="tensors")
        start = frame.ints.get("start", stage.blocks.start)
        inputs = [tensor_from_pb(t) for t in frame.tensors]
        self.used.add(frame.strings["model"])

        def run() -> tuple[list[Any], float]:
            if self.handler.delay_s:
                time.sleep(self.handler.delay_s)
            t0 = time.perf_counter()
            out = [stage.forward(self.session, x, start=start) for x in inputs]
            return out, time.perf_counter() - t0

        lone = self.handler.open_sessions == 1 and self.handler.running == 0
        if (
            lone
            and not self.handler.delay_s
            and len(inputs) == 1
            and _positions(inputs[0]) <= INLINE_POSITIONS
        ):
            # A lone session's decode step runs on the event loop: handing a step to a
            # thread and back costs about half a millisecond once the step's weights have
            # pushed everything else out of the CPU caches, a third of a hop's cost.
            outputs, compute_s = run()
        else:
            self.handler.running += 1
            try:
                outputs, compute_s = await asyncio.to_thread(run)
            finally:
                self.handler.running -= 1
        positions = sum(_positions(x) for x in inputs)
        if compute_s > 0:
            rate = positions / compute_s
            h = self.handler
            h.throughput = rate if not h.throughput else 0.9 * h.throughput + 0.1 * rate
        if self.handler.output_hook is not None:
            outputs = [self.handler.output_hook(o) for o in outputs]
        # The compute time lets a caller tell the network's share of a step from the model's.
        return dp.Frame(
            tensors=[tensor_to_pb(o, "outputs") for o in outputs], ints={"compute_us": int(compute_s * 1e6)}
        )

    async def close(self) -> None:
        """Drop the session's caches."""
        self.handler.open_sessions -= 1
        for model in self.used:
            with contextlib.suppress(NotFound):
                stage = self.handler.stages.get(model)
                if stage is not None:
                    stage.end_session(self.session)
