"""The gRPC edge: ``phage.v1.PhageCoordinator`` (and ``PhageRelay``) over the coordinator's use cases.

Validates and converts, then delegates to :class:`Coordinator`; maps
:class:`PhageError` to status codes here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from phage.coordinator.core import Coordinator
from phage.coordinator.ratelimit import Rate, RateLimiter
from phage.dataplane.relay import RelayHub
from phage.domain import NodeState
from phage.errors import InvalidInput, PayloadTooLarge, PermissionDenied, PhageError
from phage.protocol import convert
from phage.protocol.v1 import dataplane_pb2 as dp
from phage.protocol.v1 import dataplane_pb2_grpc as dp_grpc
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.store.blobs import check_digest

log = logging.getLogger("phage.grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
BLOB_CHUNK = 256 * 1024


def _peer_node_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    names = list(context.auth_context().get("x509_common_name", ()))
    return names[0].decode() if names else None


def _edge(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Translate PhageError into a gRPC status with the error's message."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await fn(self, request, context)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise  # unreachable: abort raises
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise

    return wrapper


class PhageCoordinatorServicer(pb_grpc.PhageCoordinatorServicer):
    """Node-facing RPCs."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        per_hour = coordinator.settings.node_upload_bytes_per_hour
        self.uploads = RateLimiter(Rate(per_hour, per_hour / 3600), "uploaded bytes")
        """Per node: with the blob sweep, bounds the disk a node can fill with blobs nothing uses."""

    @_edge
    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterResponse:
        reg = await self.c.nodes.register(
            join_token=request.join_token,
            public_key=request.identity_public_key,
            csr_pem=request.csr_pem,
            timestamp_ms=request.timestamp_unix_ms,
            signature=request.identity_signature,
            info=convert.node_info_to_dict(request.info),
        )
        s = self.c.settings
        return pb.RegisterResponse(
            node_id=reg.node_id,
            client_certificate_pem=reg.client_cert_pem,
            ca_certificate_pem=reg.ca_cert_pem,
            heartbeat_interval_s=s.heartbeat_interval_s,
            missed_heartbeats_dead=s.missed_heartbeats,
            status=reg.status,
        )

    @_edge
    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatResponse:
        live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        cancels, unknown = await self.c.nodes.heartbeat(
            live, convert.metrics_to_dict(request.metrics), list(request.running_assignment_ids)
        )
        response = pb.HeartbeatResponse(
            load_model=self.c.placement.load_hint(live),
            cancel_assignment_ids=cancels,
            unknown_assignment_ids=unknown,
            heartbeat_interval_s=self.c.settings.heartbeat_interval_s,
            node_state=live.node.state.value,
        )
        if request.HasField("blocks"):
            offer = convert.block_offer_from_pb(request.blocks)
            assigned = self.c.sharded.heartbeat(live.node.id, offer)
            response.blocks.CopyFrom(convert.block_assignment_to_pb(assigned))
        return response

    @_edge
    async def FetchTask(
        self, request: pb.FetchTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FetchTaskResponse:
        live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        dispatches, cancels = await self.c.dispatch.fetch(live, request.max_tasks, request.wait_ms)
        return pb.FetchTaskResponse(
            assignments=[convert.dispatch_to_pb(d, self.c.settings.max_output_bytes) for d in dispatches],
            cancel_assignment_ids=cancels,
        )

    @_edge
    async def StartTasks(
        self, request: pb.StartTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StartTasksResponse:
        live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        cancels = await self.c.dispatch.start_tasks(live, list(request.assignment_ids))
        return pb.StartTasksResponse(cancel_assignment_ids=cancels)

    @_edge
    async def SubmitResult(
        self, request: pb.TaskResult, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResultAck:
        live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        outcome = await self.c.results.submit_one(
            live, request.assignment_id, convert.result_from_pb(request)
        )
        return pb.ResultAck(accepted=outcome.accepted, duplicate=outcome.duplicate, message=outcome.message)

    @_edge
    async def SubmitResults(
        self, request: pb.ResultBatch, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResultBatchAck:
        live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        items = [(r.assignment_id, convert.result_from_pb(r)) for r in request.results]
        acks = []
        signature = request.batch_signature or None
        outcomes = await self.c.results.submit(live, items, signature)
        for (aid, _), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, PhageError):
                acks.append(
                    pb.ResultAck(
                        assignment_id=aid, accepted=False, message=outcome.message, refusal=outcome.grpc_code
                    )
                )
            else:
                acks.append(
                    pb.ResultAck(
                        assignment_id=aid,
                        accepted=outcome.accepted,
                        duplicate=outcome.duplicate,
                        message=outcome.message,
                    )
                )
        return pb.ResultBatchAck(acks=acks)

    @_edge
    async def ReportMetrics(
        self, request: pb.MetricsReport, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MetricsAck:
        live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        live.metrics["samples"] = {s.name: s.value for s in request.samples}
        return pb.MetricsAck()

    async def UploadBlob(
        self, request_iterator: AsyncIterator[pb.BlobChunk], context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BlobRef:
        try:
            live = self.c.nodes.authenticate(_peer_node_id(context), "")
            if live.node.state is NodeState.PENDING or live.node.quarantined:
                why = "quarantined" if live.node.quarantined else live.node.state.value
                raise PermissionDenied(f"node is {why}: it may not upload", field="node_id")
            limit = self.c.settings.max_output_bytes
            writer = self.c.blobs.writer(limit)
            expected: str | None = None
            try:
                first = True
                async for chunk in request_iterator:
                    if first:
                        expected = check_digest(chunk.sha256) if chunk.sha256 else None
                        if chunk.total_size > limit:
                            raise PayloadTooLarge(
                                f"output of {chunk.total_size} bytes exceeds the limit of {limit}",
                                field="total_size",
                            )
                        self.uploads.check(live.node.id, chunk.total_size)  # refuse at once if declared
                        first = False
                    self.uploads.take(live.node.id, len(chunk.data))
                    writer.write(chunk.data)
                digest = writer.commit(expected)
            except BaseException:
                writer.abort()
                raise
            return pb.BlobRef(sha256=digest, size=writer.size)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise

    async def DownloadBlob(
        self, request: pb.BlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BlobChunk]:
        try:
            live = self.c.nodes.authenticate(_peer_node_id(context), "")
            digest = check_digest(request.sha256)
            if not self.c.dispatch.holds_workspace(live, digest):
                raise InvalidInput("that blob is not a workspace of any task this node holds", field="sha256")
            path = self.c.blobs.path(digest)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise
        with path.open("rb") as fh:
            while chunk := fh.read(BLOB_CHUNK):
                yield pb.BlobChunk(sha256=digest, data=chunk)

    async def ChatOrders(
        self, request: pb.ChatSubscribe, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ChatOrder]:
        try:
            live = self.c.nodes.authenticate(_peer_node_id(context), request.node_id)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise
        async for order in self.c.chat.orders(live.node.id):
            yield order

    async def ChatStream(
        self, request_iterator: AsyncIterator[pb.ChatChunk], context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ChatStreamAck:
        try:
            live = self.c.nodes.authenticate(_peer_node_id(context), "")
            stopped = await self.c.chat.receive(live.node.id, request_iterator)
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise
        if stopped:  # the client left before the node began: end the call so the node stops
            await context.abort(grpc.StatusCode.CANCELLED, "the chat's client went away")
        return pb.ChatStreamAck(cancelled=stopped)


class RelayServicer(dp_grpc.PhageRelayServicer):
    """``phage.v1.PhageRelay``: a node that cannot accept connections serves its blocks through here."""

    def __init__(self, hub: RelayHub, authenticate: Callable[[str | None], str]) -> None:
        self.hub = hub
        self.authenticate = authenticate
        """The node id its certificate names, if it is a member of the pool (else raises)."""

    async def Serve(
        self, request_iterator: AsyncIterator[dp.RelayFrame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[dp.RelayFrame]:
        try:
            node_id = self.authenticate(_peer_node_id(context))
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise
        async for down in self.hub.serve(node_id, request_iterator):
            yield down
