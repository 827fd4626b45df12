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

from phage.domain import ReceivedAssignment, TaskResult, TaskSpec
from phage.node.agent import NodeAgent
from phage.node.config import NodeConfig
from phage.protocol.v1 import phage_pb2 as pb


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
    sender = asyncio.create_task(agent._result_loop())
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
    sender = asyncio.create_task(agent._result_loop())
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            async with asyncio.timeout(20):
                await agent._report(_assignment(0), TaskResult(exit_code=0))
        await agent._report(_assignment(1), TaskResult(exit_code=0))  # and the sender goes on
    finally:
        sender.cancel()
