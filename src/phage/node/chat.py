"""Serving chat on a node: take orders from the coordinator, stream tokens back.

The node holds one ``ChatOrders`` server stream open (it dials out, so this is
how the coordinator reaches it without a queue in between: chat never waits
behind batch work). Each order gets its own ``ChatStream`` call, so HTTP/2 flow
control throttles *that* generation when its client reads slowly, and the
coordinator ending the call — the client hung up — makes the next write fail,
which closes the engine's stream and stops the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from phage.errors import PhageError
from phage.node.endpoints import Backoff
from phage.node.engines.base import ChatMessage, Delta, Engine, GenerationRequest
from phage.node.faults import lie
from phage.protocol.channels import channel_closed_under
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc

log = logging.getLogger("phage.node.chat")

ERROR_DELIVERY_S = 10.0
"""How long a refused chat's error may take to reach the coordinator before the call is dropped."""


def order_to_request(order: pb.ChatOrder) -> GenerationRequest:
    """The engine request an order asks for."""
    return GenerationRequest(
        prompt=order.prompt,
        messages=tuple(ChatMessage(m.role, m.content) for m in order.messages),
        max_tokens=order.max_tokens or 256,
        temperature=order.temperature,
        stop=list(order.stop),
        seed=order.seed if order.has_seed else None,
        top_p=order.top_p if order.has_top_p else None,
        extras_json=order.extras_json,
    )


class ChatServer:
    """Runs the chat orders the coordinator sends this node."""

    def __init__(
        self,
        node_id: str,
        stub: Callable[[], pb_grpc.PhageCoordinatorStub],
        engine: Engine,
        fault: str = "",
    ) -> None:
        self.node_id = node_id
        self.fault = fault
        """A chat fault to inject (``node/faults.py``; tests only)."""
        self._stub = stub
        self.engine = engine
        self.active: dict[str, asyncio.Task[None]] = {}
        self.served = 0
        self.cancelled = 0

    async def run(self) -> None:
        """Keep the order stream open (reconnecting with backoff) and serve every order."""
        backoff = Backoff(cap_s=2.0)
        while True:
            try:
                call = self._stub().ChatOrders(pb.ChatSubscribe(node_id=self.node_id))
                async for order in call:
                    backoff.reset()
                    self._take(order)
            except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
                if not channel_closed_under(exc):  # the node moved to another replica: subscribe there
                    raise
            except grpc.aio.AioRpcError as exc:
                log.debug("chat order stream ended: %s", exc.code())
            await backoff.wait()

    def _take(self, order: pb.ChatOrder) -> None:
        if order.cancel:
            task = self.active.get(order.request_id)
            if task is not None:
                task.cancel()
            return
        if order.request_id in self.active:
            return  # a duplicate order: already serving it
        task = asyncio.create_task(self._serve(order), name=f"phage-chat-{order.request_id}")
        self.active[order.request_id] = task
        task.add_done_callback(functools.partial(self._forget, order.request_id))

    def _forget(self, request_id: str, _task: object) -> None:
        self.active.pop(request_id, None)

    async def _serve(self, order: pb.ChatOrder) -> None:
        """Stream one order's tokens back on a ChatStream call of its own."""
        rid = order.request_id
        served = not order.model or order.model in self.engine.models()
        if order.check and served:
            await self._check(order)
            return
        # Start the engine first and let its request go out; opening the gRPC call
        # (about a millisecond of CPU) then overlaps the engine's time to first token.
        deltas = self.engine.stream(order_to_request(order)) if served else None
        first = asyncio.ensure_future(anext(deltas, None)) if deltas is not None else None
        call: grpc.aio.StreamUnaryCall[pb.ChatChunk, pb.ChatStreamAck] | None = None
        try:
            await asyncio.sleep(0)
            call = self._stub().ChatStream()
            await call.write(pb.ChatChunk(request_id=rid, node_id=self.node_id))
            if deltas is None or first is None:
                await call.write(
                    pb.ChatChunk(
                        request_id=rid,
                        error=f"this node serves {self.engine.models()}, not {order.model!r}",
                    )
                )
            else:
                await self._pump(rid, call, deltas, first, self.fault)
            await call.done_writing()
            await call
            self.served += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            if call is not None:
                call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:  # the coordinator ended the call: the client left
            self.cancelled += 1
            log.debug("chat %s stopped: %s", rid, exc.code())
        except PhageError as exc:
            if call is not None:
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, TimeoutError):
                    await call.write(
                        pb.ChatChunk(request_id=rid, error=exc.message, error_code=exc.grpc_code)
                    )
                    await call.done_writing()
                    # Wait for the coordinator's answer before ending the call: a write returns once
                    # the chunk is queued, not sent, and cancelling at once could drop the opening
                    # chunk and the error together (seen on a loaded machine: the client then waited
                    # out the open timeout and got a 503 instead of its 400).
                    await asyncio.wait_for(asyncio.ensure_future(call), ERROR_DELIVERY_S)
                call.cancel()  # nothing left to end if the coordinator answered
        finally:
            await _close(deltas, first)

    async def _check(self, order: pb.ChatOrder) -> None:
        """Re-score another node's answer (checked chat) and send the scores back as one chunk."""
        rid = order.request_id
        try:
            sc = await self.engine.score(order_to_request(order), list(order.check_token_ids))
            chunk = pb.ChatChunk(
                request_id=rid,
                node_id=self.node_id,
                finish_reason="checked",
                score=pb.ChatScore(
                    greedy_gap=sc.greedy_gap,
                    logprob=sc.logprob,
                    entropy=sc.entropy,
                    variance=sc.variance,
                    decoded=sc.decoded,
                    eos_token_id=sc.eos_token_id or 0,
                    has_eos=sc.eos_token_id is not None,
                ),
            )
        except PhageError as exc:
            chunk = pb.ChatChunk(request_id=rid, node_id=self.node_id, error=exc.message)
        call = self._stub().ChatStream()
        try:
            await call.write(pb.ChatChunk(request_id=rid, node_id=self.node_id))  # opens the stream
            await call.write(chunk)
            await call.done_writing()
            await call
        except grpc.aio.AioRpcError as exc:
            log.debug("check %s not delivered: %s", rid, exc.code())

    @staticmethod
    async def _pump(
        rid: str,
        call: grpc.aio.StreamUnaryCall[pb.ChatChunk, pb.ChatStreamAck],
        deltas: AsyncIterator[Delta],
        first: asyncio.Future[Delta | None],
        fault: str = "",
    ) -> None:
        """Copy the engine's deltas onto the call; a failed write closes the engine stream."""
        try:
            d = await first
            while d is not None:
                if fault and d.final:
                    d = lie(fault, d)
                if d.final:
                    await call.write(
                        pb.ChatChunk(
                            request_id=rid,
                            text=d.text,
                            finish_reason=d.finish_reason or "stop",
                            prompt_tokens=d.prompt_tokens,
                            completion_tokens=d.completion_tokens,
                            token_ids=d.token_ids,
                            tool_calls_json=d.tool_calls_json,
                        )
                    )
                elif d.text:
                    await call.write(pb.ChatChunk(request_id=rid, text=d.text))
                d = await anext(deltas, None)
        finally:
            await _close(deltas, first)


async def _close(deltas: AsyncIterator[Delta] | None, first: asyncio.Future[Delta | None] | None) -> None:
    """Stop an engine stream: cancel a pending first read, then close the generator (idempotent)."""
    if first is not None:
        if not first.done():
            first.cancel()
        await asyncio.gather(first, return_exceptions=True)  # and mark an engine error as seen
    aclose = getattr(deltas, "aclose", None)
    if aclose is not None:
        await aclose()
