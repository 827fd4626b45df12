"""A node's result sender outlives a coordinator channel closed under it, and never drops a batch.

The coordinator's stub is the boundary faked here: it answers ``SubmitResults`` the way a
channel does when the node has just moved to another replica ("Channel is closed", a
UsageError rather than an RPC error) or fails in a way nobody planned for. Before the fix, the
first of these killed the sender task: every later result waited forever while heartbeats
kept the assignments' leases alive, so their tasks stayed "running" for good.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from phage.dataplane.relay import RelayServer
from phage.domain import ReceivedAssignment, TaskResult, TaskSpec
from phage.node.agent import NodeAgent
from phage.node.config import NodeConfig
from phage.protocol.channels import channel_closed_under
from phage.protocol.v1 import dataplane_pb2 as dp
from phage.protocol.v1 import dataplane_pb2_grpc as dp_grpc
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc


class FlakyStub:
    """SubmitResults fails with each of ``failures`` in turn, then acknowledges every result."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0
        self.delivered: list[str] = []

    async def SubmitResults(self, request: pb.ResultBatch, **_call: Any) -> pb.ResultBatchAck:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.delivered += [r.assignment_id for r in request.results]
        return pb.ResultBatchAck(
            acks=[pb.ResultAck(assignment_id=r.assignment_id, accepted=True) for r in request.results]
        )


def _agent(tmp_path: Path, stub: FlakyStub) -> NodeAgent:
    agent = NodeAgent(NodeConfig(key_dir=tmp_path / "keys", sandbox="none", coordinator="127.0.0.1:1"))
    agent._stub = stub  # type: ignore[assignment]
    return agent


def _assignment(n: int) -> ReceivedAssignment:
    return ReceivedAssignment(f"a-{n}", f"t-{n}", "job", TaskSpec(), input_sha256="0" * 64)


async def _deliver(agent: NodeAgent, count: int) -> list[Any]:
    sender = asyncio.create_task(agent.results.run())
    try:
        reports = [agent._report(_assignment(n), TaskResult(exit_code=0)) for n in range(count)]
        async with asyncio.timeout(20):
            await asyncio.gather(*reports)
        assert not sender.done(), "the result sender died"
        return reports
    finally:
        sender.cancel()


async def test_a_channel_closed_by_a_move_is_retried_on_the_new_one(tmp_path: Path) -> None:
    closed = grpc.aio.UsageError("Channel is closed.")
    stub = FlakyStub([closed, closed])
    agent = _agent(tmp_path, stub)
    await _deliver(agent, 3)
    assert sorted(stub.delivered) == ["a-0", "a-1", "a-2"]
    assert stub.calls >= 3


async def test_an_unplanned_failure_keeps_the_batch_and_the_sender(tmp_path: Path) -> None:
    stub = FlakyStub([RuntimeError("something nobody planned for")])
    agent = _agent(tmp_path, stub)
    await _deliver(agent, 2)
    assert sorted(stub.delivered) == ["a-0", "a-1"]  # nothing lost, nothing sent twice


async def test_a_definite_refusal_reaches_the_results_waiters(tmp_path: Path) -> None:
    class Refused(grpc.aio.AioRpcError):
        def __init__(self) -> None:
            super().__init__(
                grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused", None
            )

    agent = _agent(tmp_path, FlakyStub([Refused()]))
    sender = asyncio.create_task(agent.results.run())
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            async with asyncio.timeout(20):
                await agent._report(_assignment(0), TaskResult(exit_code=0))
        await agent._report(_assignment(1), TaskResult(exit_code=0))  # and the sender goes on
    finally:
        sender.cancel()


class HangingFirst(pb_grpc.PhageCoordinatorServicer):
    """A real gRPC coordinator stand-in: the first SubmitResults never answers, later ones acknowledge."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_arrived = asyncio.Event()
        self.delivered: list[str] = []

    async def SubmitResults(self, request: pb.ResultBatch, context: Any) -> pb.ResultBatchAck:
        self.calls += 1
        if self.calls == 1:
            self.first_arrived.set()
            await asyncio.sleep(3600)
        self.delivered += [r.assignment_id for r in request.results]
        return pb.ResultBatchAck(
            acks=[pb.ResultAck(assignment_id=r.assignment_id, accepted=True) for r in request.results]
        )


async def test_a_result_in_flight_when_the_node_moves_is_sent_again_on_the_new_channel(
    tmp_path: Path,
) -> None:
    """Closing a channel ends its open calls with CancelledError in the awaiting task — what a task
    being cancelled sees. The sender must tell the two apart and send the batch again."""
    servicer = HangingFirst()
    server = grpc.aio.server()
    pb_grpc.add_PhageCoordinatorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    old = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    agent = NodeAgent(NodeConfig(key_dir=tmp_path / "keys", sandbox="none", coordinator="127.0.0.1:1"))
    agent._stub = pb_grpc.PhageCoordinatorStub(old)  # type: ignore[no-untyped-call]
    sender = asyncio.create_task(agent.results.run())
    try:
        report = asyncio.create_task(agent._report(_assignment(0), TaskResult(exit_code=0)))
        async with asyncio.timeout(20):
            await servicer.first_arrived.wait()
            # the move, as NodeAgent._open makes it: the new channel first, then the old one closed
            new = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            agent._stub = pb_grpc.PhageCoordinatorStub(new)  # type: ignore[no-untyped-call]
            await old.close(None)
            await report
        assert not sender.done(), "the result sender died with the old channel"
        assert servicer.delivered == ["a-0"]
        await new.close(None)
    finally:
        sender.cancel()
        await server.stop(0)


async def test_a_cancelled_task_is_not_mistaken_for_a_closed_channel() -> None:
    seen: list[bool] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as exc:
            seen.append(channel_closed_under(exc))
            raise

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [False]
    assert channel_closed_under(grpc.aio.UsageError("Channel is closed."))


class CountingRelay(dp_grpc.PhageRelayServicer):
    """A coordinator's relay end that only counts the streams nodes open and holds them open."""

    def __init__(self) -> None:
        self.opened = 0
        self.changed = asyncio.Event()

    async def Serve(self, request_iterator: Any, context: Any) -> Any:
        self.opened += 1
        self.changed.set()
        async for _ in request_iterator:
            pass
        if False:  # an async generator that sends nothing down
            yield dp.RelayFrame()


async def test_a_relayed_node_opens_its_relay_stream_again_after_a_move() -> None:
    """A node served through the coordinator's relay keeps a stream open on its control channel;
    the move's channel close cut it, and the relay task ended for good with it."""
    relay = CountingRelay()
    server = grpc.aio.server()
    dp_grpc.add_PhageRelayServicer_to_server(relay, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}")]
    serving = asyncio.create_task(RelayServer(lambda: channels[-1], {}).run(retry_s=0.05))
    try:
        async with asyncio.timeout(20):
            while relay.opened < 1:
                relay.changed.clear()
                await relay.changed.wait()
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            await channels[0].close(None)
            while relay.opened < 2:
                relay.changed.clear()
                await relay.changed.wait()
        assert not serving.done(), "the relay task died with the old channel"
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await channels[-1].close(None)
        await server.stop(0)
