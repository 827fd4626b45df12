"""Results on their way to the coordinator: batched, signed, retried, never dropped.

Executors finish one by one; the sender takes whatever results are waiting when the
last RPC returns — up to ``RESULT_BATCH`` — and sends them in one ``SubmitResults`` call
under one attestation signature over the batch. A transient failure (the coordinator
restarting, the node moving to another replica) is retried on whatever channel is in
use by then; a definite refusal reaches each result's waiter; anything unexpected keeps
the batch for the next try, so a result is never lost with a crashed sender.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import grpc

from phage.node.attest import sign_batch
from phage.node.endpoints import retry_rpc
from phage.pki.attestation import AttestationRecord
from phage.pki.identity import NodeIdentity
from phage.protocol.v1 import phage_pb2 as pb

log = logging.getLogger("phage.node")

RESULT_BATCH = 256
"""Results sent in one call at most."""

Submit = Callable[[pb.ResultBatch], Awaitable[pb.ResultBatchAck]]
"""One ``SubmitResults`` call on the channel in use now."""


class ResultSender:
    """Queues results and sends them in signed batches; each ``report`` waits for its acknowledgement."""

    def __init__(self, identity: NodeIdentity, submit: Submit) -> None:
        self.identity = identity
        self.submit = submit
        self._queued: list[tuple[pb.TaskResult, AttestationRecord, asyncio.Future[pb.ResultAck]]] = []
        self._ready = asyncio.Event()

    async def report(self, msg: pb.TaskResult, record: AttestationRecord) -> pb.ResultAck:
        """Queue one result; the coordinator's acknowledgement (a refusal raises its RPC error)."""
        fut: asyncio.Future[pb.ResultAck] = asyncio.get_running_loop().create_future()
        self._queued.append((msg, record, fut))
        self._ready.set()
        return await fut

    async def run(self) -> None:
        """Send queued results — as many per RPC as gathered while the last was in flight."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queued:
                batch, self._queued = self._queued[:RESULT_BATCH], self._queued[RESULT_BATCH:]
                request = pb.ResultBatch(
                    node_id=self.identity.node_id,
                    results=[m for m, _, _ in batch],
                    batch_signature=sign_batch(self.identity, [r for _, r, _ in batch]),
                )
                try:
                    resp = await retry_rpc(functools.partial(self.submit, request))
                except grpc.aio.AioRpcError as exc:  # a definite refusal: each result's waiter hears it
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                except Exception:  # anything else: keep the batch, never let the sender die with it
                    log.exception("sending %d results failed; trying again", len(batch))
                    self._queued[:0] = batch
                    await asyncio.sleep(1.0)
                    continue
                for (_, _, fut), ack in zip(batch, resp.acks, strict=True):
                    if not fut.done():
                        fut.set_result(ack)
