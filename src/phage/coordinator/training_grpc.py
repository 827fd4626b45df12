"""The gRPC edge of training: ``phage.v1.PhageTraining`` over :class:`TrainingService`.

Converts protobuf to the service's types and back here and nowhere else; the
node is always the one its mTLS certificate names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from phage.coordinator.training import TrainingService
from phage.coordinator.training_relay import Frame
from phage.coordinator.training_types import CheckOrder, DropOrder, HostOrder, Order, Report
from phage.errors import InvalidInput, PermissionDenied, PhageError
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import training_pb2 as tpb
from phage.protocol.v1 import training_pb2_grpc as tpb_grpc
from phage.store.blobs import check_digest

BLOB_CHUNK = 256 * 1024

Authenticate = Callable[[str | None, str], str]
"""(certificate's node id, claimed node id) -> the node id, or raise."""


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    names = list(context.auth_context().get("x509_common_name", ()))
    return names[0].decode() if names else None


def order_to_pb(order: Order) -> tpb.TrainingOrder:
    """A service order as the wire message."""
    if isinstance(order, HostOrder):
        c = order.config
        return tpb.TrainingOrder(
            host=tpb.HostVNode(
                network_id=order.network_id,
                vnode_id=order.vnode_id,
                spec_json=json.dumps(dict(order.spec)),
                dataset_sha256=order.dataset,
                checkpoint_sha256=order.checkpoint,
                epochs=c.epochs,
                batch_size=c.batch_size,
                seed=c.seed,
                checkpoint_every=c.checkpoint_every,
                check_rate=order.check_rate,
                generation=order.generation,
                replay_from=order.replay_from,
                routes=[
                    tpb.VNodeRoute(
                        vnode_id=r.vnode_id,
                        node_id=r.node_id,
                        address=r.address,
                        generation=r.generation,
                        consumer=r.consumer,
                    )
                    for r in order.routes
                ],
                routes_only=order.routes_only,
            )
        )
    if isinstance(order, CheckOrder):
        return tpb.TrainingOrder(
            check=tpb.CheckStep(
                check_id=order.check_id,
                network_id=order.network_id,
                vnode_id=order.vnode_id,
                spec_json=json.dumps(dict(order.spec)),
                before_sha256=order.before,
                inputs_sha256=order.inputs,
                seq=order.seq,
            )
        )
    return tpb.TrainingOrder(drop=tpb.DropVNode(network_id=order.network_id, vnode_id=order.vnode_id))


class TrainingServicer(tpb_grpc.PhageTrainingServicer):
    """Node-facing training RPCs."""

    def __init__(self, service: TrainingService, authenticate: Authenticate) -> None:
        self.service = service
        self.authenticate = authenticate

    async def _node(self, context: grpc.aio.ServicerContext[Any, Any], claimed: str) -> str:
        try:
            return self.authenticate(_peer(context), claimed)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise

    async def TrainingOrders(
        self, request: tpb.TrainingSubscribe, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[tpb.TrainingOrder]:
        node_id = await self._node(context, request.node_id)
        async for order in self.service.subscribe(node_id, request.dataplane_address):
            if isinstance(order, DropOrder) and not order.network_id:
                return  # a newer subscription of the same node replaced this one
            yield order_to_pb(order)

    async def Activations(
        self,
        request_iterator: AsyncIterator[tpb.ActivationFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[tpb.ActivationFrame]:
        node_id = await self._node(context, "")
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        network_id, vnode_id, generation = first.network_id, first.vnode_id, first.generation
        try:
            inbox = await self.service.open_stream(node_id, network_id, vnode_id, generation)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise

        async def pump_up() -> None:
            async for f in request_iterator:
                await self.service.relay(
                    node_id, network_id, vnode_id, generation, Frame(vnode_id, f.seq, f.tensor, f.end)
                )

        up = asyncio.create_task(pump_up())
        try:
            while True:
                get = asyncio.ensure_future(inbox.get(generation))
                done, _ = await asyncio.wait({get, up}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    failure = up.exception()
                    if isinstance(failure, PhageError):
                        await context.abort(getattr(grpc.StatusCode, failure.grpc_code), failure.message)
                    return
                f = get.result()
                if f is None:
                    return  # a newer host of this VNode took over, or the network ended
                yield tpb.ActivationFrame(
                    network_id=network_id, vnode_id=f.vnode_id, seq=f.seq, tensor=f.tensor, end=f.end
                )
        finally:
            up.cancel()
            with contextlib.suppress(BaseException):
                await up

    async def FetchBlob(
        self, request: pb.BlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BlobChunk]:
        node_id = await self._node(context, "")
        try:
            digest = check_digest(request.sha256)
            if not self.service.may_read(node_id, digest) or not self.service.blobs.exists(digest):
                raise PermissionDenied(
                    "that blob belongs to no training work this node holds", field="sha256"
                )
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise
        with self.service.blobs.path(digest).open("rb") as fh:
            while chunk := fh.read(BLOB_CHUNK):
                yield pb.BlobChunk(sha256=digest, data=chunk)

    async def ReportVNode(
        self, request: tpb.VNodeReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tpb.VNodeReportAck:
        node_id = await self._node(context, request.node_id)
        try:
            if request.check_id:
                await self.service.check_result(node_id, request.check_id, request.check_result_digest)
                return tpb.VNodeReportAck()
            if not request.network_id or not request.vnode_id:
                raise InvalidInput("a report names its network and VNode", field="vnode_id")
            keep = await self.service.report(
                node_id,
                Report(
                    network_id=request.network_id,
                    vnode_id=request.vnode_id,
                    generation=request.generation,
                    step=request.step,
                    last_batch=request.last_batch,
                    loss=request.loss,
                    samples_per_s=request.samples_per_s,
                    samples=request.samples,
                    checkpoint=request.checkpoint_sha256,
                    done=request.done,
                    error=request.error,
                    check_seq=request.check_seq,
                    check_before=request.check_before_sha256,
                    check_inputs=request.check_inputs_sha256,
                    check_after=request.check_after_digest,
                    frames=(request.frames_direct, request.frames_relayed, request.frames_local),
                ),
            )
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise
        return tpb.VNodeReportAck(stop=not keep)
