"""The ``stage`` service on the data plane: run this node's blocks for a peer's session.

One conversation is one session: its attention cache is created by the first
``forward`` and dropped when the stream ends, so a caller that hangs up or dies
frees the memory. A ``forward`` frame may carry several input chunks, run in
order with one output each — how a caller replays a session's history onto a
replacement node after a failure, in the same chunks as the first time, which
rebuilds the cache exactly.

When the chain's nodes can reach each other, the caller asks each node to push its
output straight to the next (``push_to``) and tells the next whom to expect it from
(``from``): the step's path is then one message per node plus one back to the caller
(:mod:`phage.node.stage_inbox`). Each node still answers the caller with its output.

In a chain that decodes on its own, the caller also asks the last node to pick the next token
(its sampling settings and random generator state ride on the request, see
:mod:`phage.dataplane.sampling`) and to push that token to the first node as its next input.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from phage.dataplane import tensor_from_pb, tensor_to_pb
from phage.dataplane.sampling import Sampling, pick, take_sampling
from phage.dataplane.stage_frames import push_frame
from phage.dataplane.transport import Peer, close_peers
from phage.errors import Conflict, EngineError, InvalidInput, NotFound, PhageError
from phage.node.stage import StageModel
from phage.node.stage_inbox import Inbox
from phage.protocol.v1 import dataplane_pb2 as dp

SERVICE = "stage"
MAX_CHUNKS = 4096
MAX_SESSION_ID = 128
MAX_PUSH_BYTES = 1 << 20
"""A pushed input is one decode position's hidden state (64 KiB at width 16,384 in float32)."""
INLINE_POSITIONS = 1
"""A lone session's steps of at most this many positions (decode steps) run without a thread hand-off."""

OutputHook = Callable[[Any], Any]
"""Applied to every output a stage sends (fault injection for tests: node/faults.py)."""


class StageHandler:
    """Serves forward passes through the stages (one per sharded model) this node holds."""

    def __init__(
        self,
        stages: Mapping[str, StageModel],
        *,
        dial: Callable[[str, str], Peer] | None = None,
        node_id: str = "",
        output_hook: OutputHook | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.stages = stages
        self.dial = dial
        """How this node reaches the next node of a chain to push its outputs (None: it cannot)."""
        self.node_id = node_id
        """This node's id: a push to itself (a one-node ring) goes straight to its inbox."""
        self.inbox = Inbox()
        """Inputs the node before in a chain pushed here, waiting for their steps."""
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
        """A new conversation with ``peer_node_id``: a session once it runs a step, or a stream of pushes."""
        return _StageConversation(self, peer_node_id)


def _session_id(frame: dp.Frame) -> str:
    session = frame.strings.get("session", "")
    if not 1 <= len(session) <= MAX_SESSION_ID:
        raise InvalidInput(
            f"a pushed step names its session in 1 to {MAX_SESSION_ID} characters", field="session"
        )
    return session


def _token_tensor(token: int) -> Any:
    import torch

    return torch.tensor([token], dtype=torch.int64)


def _positions(x: Any) -> int:
    return int(x.shape[0] if x.dim() == 1 else x.shape[1])


class _StageConversation:
    def __init__(self, handler: StageHandler, peer: str) -> None:
        self.handler = handler
        self.peer = peer
        self.session = f"{peer}/{uuid.uuid4().hex}"
        """The key of this conversation's attention caches."""
        self.used: set[str] = set()
        self.counted = False
        """Whether this conversation counts as a session (it ran a step; pushes alone do not)."""
        self.pushed_to: dict[str, Peer] = {}
        """Conversations with the next nodes this session's outputs are pushed to."""
        self.chain_sessions: set[str] = set()
        """The caller's session ids this conversation named (their pushed inputs go when it ends)."""
        self.generator: Any = None
        """The random generator this node picks tokens with, when it is a ring's last node."""

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
        """Run ``forward`` (every input chunk in order through this node's blocks), or take a ``push``."""
        if frame.op == "push":
            return await self._take_push(frame)
        if frame.op != "forward":
            raise InvalidInput(f"the stage service has no operation {frame.op!r}", field="op")
        stage = self._stage(frame)
        sampling = take_sampling(frame, self.generator)
        if sampling is not None and not stage.last:
            raise InvalidInput("only a node holding the model's last block picks tokens", field="temperature")
        source = frame.strings.get("from", "")
        if source:
            if frame.tensors:
                raise InvalidInput(
                    "a forward whose input another node pushes carries no tensors", field="tensors"
                )
            chain_session = self._chain_session(frame)
            inputs = [
                await self.handler.inbox.take(self.peer, chain_session, frame.ints.get("step", 0), source)
            ]
        else:
            if not 1 <= len(frame.tensors) <= MAX_CHUNKS:
                raise InvalidInput(f"a forward carries 1 to {MAX_CHUNKS} input chunks", field="tensors")
            inputs = [tensor_from_pb(t) for t in frame.tensors]
        start = frame.ints.get("start", stage.blocks.start)
        self.used.add(frame.strings["model"])
        if not self.counted:
            self.counted = True
            self.handler.open_sessions += 1

        started = 0.0

        def run() -> tuple[list[Any], float]:
            nonlocal started
            if self.handler.delay_s:
                time.sleep(self.handler.delay_s)
            started = time.perf_counter()
            out = [stage.forward(self.session, x, start=start) for x in inputs]
            return out, time.perf_counter() - started

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
        if self.handler.output_hook is not None:
            outputs = [self.handler.output_hook(o) for o in outputs]
        token = self._pick(sampling, outputs[-1]) if sampling is not None else None
        pushing = bool(frame.strings.get("push_to"))
        # The next node first: its step waits on this, the caller's record does not.
        problem = ""
        if pushing and token is not None:  # a ring's last node: its token is the first node's next input
            problem = await self._push(frame, tensor_to_pb(_token_tensor(token)), 1)
        wire = [tensor_to_pb(o, "outputs") for o in outputs]
        if pushing and token is None:
            problem = await self._push(frame, wire[-1], 0)
        positions = sum(_positions(x) for x in inputs)
        if compute_s > 0:
            rate = positions / compute_s
            h = self.handler
            h.throughput = rate if not h.throughput else 0.9 * h.throughput + 0.1 * rate
        # The compute time lets a caller tell the network's share of a step from the model's.
        reply = dp.Frame(tensors=wire, ints={"compute_us": int(compute_s * 1e6)})
        if token is not None:
            reply.ints["token"] = token
        if source and stage.first:  # a token another node picked: the ring's driver checks it is its own
            reply.ints["token_in"] = int(inputs[0].reshape(-1)[-1])
        if stage.first:  # when the step started here: a ring's token-to-token time, on one clock
            reply.ints["started_us"] = int(started * 1e6)
        if problem:
            reply.strings["push_error"] = problem
        return reply

    def _chain_session(self, frame: dp.Frame) -> str:
        """The caller's session id a pushed step names (remembered: its inputs go when this ends)."""
        session = _session_id(frame)
        self.chain_sessions.add(session)
        return session

    def _pick(self, sampling: tuple[Sampling, Any], logits: Any) -> int:
        """The next token, as the ring's driver would pick it from these logits."""
        rule, self.generator = sampling
        try:
            return pick(logits, rule, self.generator)
        except RuntimeError as exc:  # logits torch cannot sample from (not a number): the model's fault
            raise EngineError(f"could not pick a token from this node's logits: {exc}") from None

    async def _push(self, frame: dp.Frame, output: dp.Tensor, ahead: int) -> str:
        """Send this step's output to the next node as the input of the step ``ahead`` steps on (a
        ring's last node hands the first its next step's token); why not, or "" once it is on its way.

        One-way: the next node starts its step as soon as the input arrives, with no
        acknowledgement to write first. A push that is sent but refused there shows as that
        node's answer to the caller (it waited in vain), and the caller routes that part of
        the chain again, blaming no node.
        """
        target, address = frame.strings["push_to"], frame.strings.get("push_address", "")
        if self.handler.dial is None:
            return "this node cannot reach other nodes to push to them"
        session = self._chain_session(frame)
        step = frame.ints.get("step", 0) + ahead
        if target == self.handler.node_id:  # a one-node ring feeds itself
            try:
                self.handler.inbox.deliver(target, self.peer, session, step, tensor_from_pb(output))
            except PhageError as exc:
                return f"could not hand this node its own output: {exc.message}"
            return ""
        push = push_frame(output, step, session, self.peer)
        peer = self.pushed_to.get(target)
        try:
            if peer is None:
                peer = self.pushed_to[target] = self.handler.dial(address, target)
            await peer.send(push)
        except PhageError as exc:
            self.pushed_to.pop(target, None)
            if peer is not None:
                await close_peers([peer])
            return f"could not push to node {target}: {exc.message}"
        return ""

    async def _take_push(self, frame: dp.Frame) -> dp.Frame:
        """The node before in some client's chain hands over a step's input."""
        if len(frame.tensors) != 1:
            raise InvalidInput("a push carries exactly one tensor", field="tensors")
        if len(frame.tensors[0].data) > MAX_PUSH_BYTES:
            raise InvalidInput(f"a pushed input is at most {MAX_PUSH_BYTES} bytes", field="tensors")
        client = frame.strings.get("client", "")
        if not 1 <= len(client) <= MAX_SESSION_ID:
            raise InvalidInput(
                f"a push names the client whose session it feeds in 1 to {MAX_SESSION_ID} characters",
                field="client",
            )
        session = _session_id(frame)
        self.handler.inbox.deliver(
            self.peer, client, session, frame.ints.get("step", 0), tensor_from_pb(frame.tensors[0])
        )
        await asyncio.sleep(0)  # the step waiting for this input starts before this stream reads on
        return dp.Frame()

    async def close(self) -> None:
        """Drop the session's caches and pushed inputs, then end its pushes onward.

        The bookkeeping comes before the one await: a conversation ends when its caller
        hangs up, and the task closing it may be cancelled again at that await.
        """
        for session in self.chain_sessions:
            self.handler.inbox.drop(self.peer, session)
        if self.counted:
            self.counted = False
            self.handler.open_sessions -= 1
            for model in self.used:
                with contextlib.suppress(NotFound):
                    stage = self.handler.stages.get(model)
                    if stage is not None:
                        stage.end_session(self.session)
        peers, self.pushed_to = list(self.pushed_to.values()), {}
        await close_peers(peers)
