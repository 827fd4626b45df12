"""Frames node to node: a gRPC server each serving node runs, and a client conversation with a peer.

Both ends present certificates from the pool's CA. The server reads the caller's
node id from the TLS session (the certificate's common name, which only the CA
sets) and hands it to the handler, so state a handler keeps belongs to the node
that opened the conversation. The client names the node it means to reach: the
TLS target name is that node's certificate name (:func:`phage.pki.ca.node_dns_name`),
so the handshake fails with any other node, even one of the same pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from phage import errors
from phage.errors import PermissionDenied, PhageError, Unavailable
from phage.pki.ca import node_dns_name
from phage.protocol.v1 import dataplane_pb2 as dp
from phage.protocol.v1 import dataplane_pb2_grpc as dp_grpc

log = logging.getLogger("phage.dataplane")

OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True, slots=True)
class TLSIdentity:
    """What one end needs for mutual TLS: its node id, TLS key and certificate, and the pool's CA."""

    node_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


class Conversation(Protocol):
    """A handler's state for one stream: answers frames in order, released when the stream ends."""

    async def handle(self, frame: dp.Frame) -> dp.Frame:
        """The reply to one request frame (raise a PhageError to refuse it)."""

    async def close(self) -> None:
        """The stream ended (the caller finished, hung up or died)."""


class Handler(Protocol):
    """A service on the data plane (``stage`` for sharded models)."""

    def open(self, peer_node_id: str) -> Conversation:
        """A conversation with the node ``peer_node_id``, which the TLS session proved."""


def error_frame(seq: int, exc: PhageError) -> dp.Frame:
    """A reply saying why a request failed."""
    return dp.Frame(seq=seq, error=exc.message, error_kind=type(exc).__name__)


def raise_for_error(frame: dp.Frame) -> dp.Frame:
    """``frame`` unless it reports an error, which is raised as the phage error it names."""
    if not frame.error:
        return frame
    kind = getattr(errors, frame.error_kind, PhageError)
    if not (isinstance(kind, type) and issubclass(kind, PhageError)):
        kind = PhageError
    raise kind(frame.error)


class _Servicer(dp_grpc.PhageDataPlaneServicer):
    def __init__(self, handlers: Mapping[str, Handler], allow: Callable[[str], bool]) -> None:
        self.handlers = handlers
        self.allow = allow

    async def Open(
        self, request_iterator: AsyncIterator[dp.Frame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Answer the conversation's requests in order, reading the next and writing replies meanwhile.

        A request waits here, already read, while the one before it runs, and a reply leaves
        while the next request runs: a chain node that decodes on its own starts its next
        step the moment that step's input arrives, with no round trip through gRPC between.
        """
        names = list(context.auth_context().get("x509_common_name", ()))
        peer = names[0].decode() if names else ""
        if not peer or not self.allow(peer):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"node {peer or '?'} may not use this node"
            )
        await _Stream(self.handlers, peer, context).run(request_iterator)


READ_AHEAD = 8
"""Requests of one conversation read ahead of the one running (beyond, gRPC's flow control holds them)."""


class _Stream:
    """One conversation on the serving side: frames answered in order, the next read while one runs."""

    def __init__(
        self, handlers: Mapping[str, Handler], peer: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.handlers = handlers
        self.peer = peer
        self.context = context
        self.open: dict[str, Conversation] = {}
        self.inbound: asyncio.Queue[dp.Frame | None] = asyncio.Queue(READ_AHEAD)
        self.outbound: asyncio.Queue[dp.Frame | None] = asyncio.Queue()
        self.busy = False
        """Whether a request is being answered now."""

    async def run(self, requests: AsyncIterator[dp.Frame]) -> None:
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(requests))
        writer = loop.create_task(self._write())
        try:
            while not (reader.done() and self.inbound.empty()) and not writer.done():
                frame = await self.inbound.get()
                if frame is None:
                    break
                self.busy = True
                try:
                    await self._answer(frame)
                finally:
                    self.busy = False
            self.outbound.put_nowait(None)
            await writer  # every reply is out before the call ends
        finally:
            for task in (reader, writer):
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # a stream that broke: the conversation just ends
            await close_conversations(self.open)

    async def _answer(self, frame: dp.Frame) -> None:
        reply = await answer(self.handlers, self.open, self.peer, frame)
        if not frame.one_way:
            self.outbound.put_nowait(reply)
            await asyncio.sleep(0)  # the writer starts sending it before the next request runs
        elif reply.error:
            log.info(
                "a one-way %s/%s from node %s failed: %s", frame.service, frame.op, self.peer, reply.error
            )

    async def _read(self, requests: AsyncIterator[dp.Frame]) -> None:
        try:
            async for frame in requests:
                if frame.one_way and not self.busy and self.inbound.empty():
                    await self._answer(frame)  # nothing ahead of it: taken on the spot (a chain's push)
                else:
                    await self.inbound.put(frame)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self.inbound.put_nowait(None)  # a full queue is drained first, then seen to have ended

    async def _write(self) -> None:
        while (reply := await self.outbound.get()) is not None:
            await self.context.write(reply)


async def answer(
    handlers: Mapping[str, Handler], open_: dict[str, Conversation], peer: str, frame: dp.Frame
) -> dp.Frame:
    """The reply to one request frame of a conversation (``open_``: its handlers' state, by service)."""
    handler = handlers.get(frame.service)
    if handler is None:
        return error_frame(frame.seq, errors.NotFound(f"this node serves no {frame.service!r}"))
    conversation = open_.get(frame.service)
    if conversation is None:
        conversation = open_[frame.service] = handler.open(peer)
    try:
        reply = await conversation.handle(frame)
    except PhageError as exc:
        return error_frame(frame.seq, exc)
    reply.seq = frame.seq
    return reply


async def close_conversations(open_: dict[str, Conversation]) -> None:
    """The conversation ended: every handler drops what it kept for it."""
    for conversation in open_.values():
        with contextlib.suppress(Exception):
            await conversation.close()
    open_.clear()


class DataPlaneServer:
    """The data-plane listener of one node; ``allow`` decides which peers may open conversations."""

    def __init__(
        self,
        identity: TLSIdentity,
        handlers: Mapping[str, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow: Callable[[str], bool] = lambda _peer: True,
    ) -> None:
        self.identity = identity
        self.host = host
        self.port = port
        self._server = grpc.aio.server(options=OPTIONS)
        dp_grpc.add_PhageDataPlaneServicer_to_server(_Servicer(handlers, allow), self._server)  # type: ignore[no-untyped-call]

    async def start(self) -> int:
        """Listen; returns the port (a free one when 0 was asked)."""
        creds = grpc.ssl_server_credentials(
            [(self.identity.key_pem, self.identity.cert_pem)],
            root_certificates=self.identity.ca_pem,
            require_client_auth=True,
        )
        self.port = self._server.add_secure_port(f"{self.host}:{self.port}", creds)
        await self._server.start()
        return self.port

    @property
    def address(self) -> str:
        """``host:port`` peers dial."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float = 0.5) -> None:
        """Stop listening; open conversations end."""
        await self._server.stop(grace)


class RemoteConversation(Protocol):
    """The caller's end of a conversation with one node, direct (:class:`Peer`) or relayed."""

    async def request(self, frame: dp.Frame, wait_s: float = 60.0) -> dp.Frame:
        """Send ``frame`` and wait for its reply; a dead or unreachable node: Unavailable."""

    async def close(self) -> None:
        """End the conversation (the node drops what it kept for it)."""


Dial = Callable[[str, str], RemoteConversation]
"""``dial(address, node_id)``: a new conversation with the node ``node_id`` at ``address``."""


def direct(identity: TLSIdentity) -> Callable[[str, str], Peer]:
    """Dial nodes directly, over mutual TLS as ``identity``, for sessions (never silently reopened)."""
    return lambda address, node_id: Peer(identity, address, node_id, reopen=False)


_BROKEN = (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError)
"""How a call on a peer's stream fails when the peer died, hung up or cannot be reached."""


class Peer:
    """A conversation with one remote node: requests answered in order, several may be in flight.

    Replies come back in the order of the requests, so one reader task hands each to the
    request it answers. A request may be posted before the ones ahead of it are answered
    (:meth:`post`): a chain that decodes on its own has its nodes' next steps waiting for
    their inputs there, and the driver only reads how each went.

    ``reopen``: whether a conversation that ended (the node restarted, the connection broke)
    may be followed by a new one on the next request — right where each request stands alone,
    wrong for a session whose state (an attention cache) the node kept for the old one: there
    every later request fails with the error that ended it, and the caller fails over.
    """

    def __init__(self, identity: TLSIdentity, address: str, node_id: str, *, reopen: bool = True) -> None:
        self.address = address
        self.node_id = node_id
        self.reopen = reopen
        self._ended: PhageError | None = None
        """What ended the last conversation (raised on every request when it may not be reopened)."""
        creds = grpc.ssl_channel_credentials(
            root_certificates=identity.ca_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_pem,
        )
        options = [*OPTIONS, ("grpc.ssl_target_name_override", node_dns_name(node_id))]
        self._channel = grpc.aio.secure_channel(address, creds, options=options)
        self._call: Any = None
        self._seq = 0
        self._writing = asyncio.Lock()
        self._waiting: collections.deque[tuple[int, asyncio.Future[dp.Frame]]] = collections.deque()
        """Requests of the open call awaiting their replies, in the order they were sent."""
        self._reader: asyncio.Task[None] | None = None

    async def request(self, frame: dp.Frame, wait_s: float = 60.0) -> dp.Frame:
        """Send ``frame``, wait up to ``wait_s`` for the reply; a dead or unreachable peer: Unavailable."""
        try:
            async with asyncio.timeout(wait_s):
                reply = await self.post(frame, wait_s)
                return raise_for_error(await reply)
        except TimeoutError:
            raise self._broken(TimeoutError(f"no reply within {wait_s:g} s")) from None

    async def post(self, frame: dp.Frame, wait_s: float = 10.0) -> asyncio.Future[dp.Frame]:
        """Send ``frame`` without waiting for its reply: the reply's future (a refusal is a reply whose
        ``error`` is set: :func:`raise_for_error`).

        The future fails with Unavailable when the conversation breaks first; cancelling it
        only stops waiting (the node still answers, and the reply is dropped).
        """
        reply: asyncio.Future[dp.Frame] = asyncio.get_running_loop().create_future()
        await self._write(frame, wait_s, reply)
        return reply

    async def send(self, frame: dp.Frame, wait_s: float = 10.0) -> None:
        """Send ``frame`` as a one-way request (no reply comes); a dead or unreachable peer: Unavailable.

        Done once the frame is on its way, not when the peer has it: what the peer does with it
        shows elsewhere (for a chain, in the next node's answer to its caller).
        """
        frame.one_way = True
        await self._write(frame, wait_s, None)

    async def _write(self, frame: dp.Frame, wait_s: float, reply: asyncio.Future[dp.Frame] | None) -> None:
        async with self._writing:
            try:
                call = self._open()
                self._seq += 1
                frame.seq = self._seq
                if reply is not None:
                    self._waiting.append((frame.seq, reply))
                async with asyncio.timeout(wait_s):
                    await call.write(frame)
            except _BROKEN as exc:
                _drop(reply)  # the error is raised here instead
                raise self._broken(exc) from None
            except asyncio.CancelledError:
                # Sent or not, nobody can tell: the replies that follow could not be matched up.
                _drop(reply)
                self._broken(asyncio.CancelledError("a request was cancelled while it was being sent"))
                raise

    def _open(self) -> Any:
        if self._call is None:
            if self._ended is not None and not self.reopen:
                raise self._ended
            stub = dp_grpc.PhageDataPlaneStub(self._channel)  # type: ignore[no-untyped-call]
            self._call = stub.Open()
            self._reader = asyncio.get_running_loop().create_task(
                self._read(self._call), name=f"phage-dataplane-read-{self.node_id}"
            )
        return self._call

    async def _read(self, call: Any) -> None:
        """Hand each reply of ``call`` to the request it answers, until the call ends."""
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise Unavailable(f"node {self.node_id} at {self.address} ended the conversation")
                if not self._waiting:
                    raise errors.ProtocolError(f"node {self.node_id} answered a request never made")
                seq, waiting = self._waiting.popleft()
                if reply.seq != seq:
                    raise errors.ProtocolError(f"node {self.node_id} answered request {reply.seq}, not {seq}")
                if not waiting.done():
                    waiting.set_result(reply)
        except PhageError as exc:
            if call is self._call:
                self._fail(exc)
        except _BROKEN as exc:
            if call is self._call:
                self._broken(exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # closed or broken from outside
            if call is self._call:  # gRPC cancelled the call itself (its channel closed)
                self._fail(
                    Unavailable(f"node {self.node_id} at {self.address}: the conversation was cancelled")
                )

    def _fail(self, exc: PhageError) -> None:
        """The open call is over: every request still waiting fails with ``exc``; the next opens a new one."""
        call, self._call, self._reader = self._call, None, None
        if call is not None:
            call.cancel()
            self._ended = exc
        while self._waiting:
            _seq, waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_exception(exc)

    def _broken(self, exc: BaseException) -> PhageError:
        """The error for a call that broke; it is dropped with every request waiting on it."""
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
        error: PhageError
        if code is grpc.StatusCode.PERMISSION_DENIED:
            error = PermissionDenied(f"node {self.node_id} refused this node: {exc}")
        else:
            error = Unavailable(f"node {self.node_id} at {self.address} is unreachable ({code or exc!r})")
        reader = self._reader
        self._fail(error)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        return error

    async def close(self) -> None:
        """End the conversation (the peer drops what it kept for it) and the channel."""
        call, reader = self._call, self._reader
        self._call = self._reader = None
        if reader is not None:
            reader.cancel()
        while self._waiting:
            self._waiting.popleft()[1].cancel()
        if call is not None:
            with contextlib.suppress(Exception):
                await call.done_writing()
        await self._channel.close(None)


def _drop(reply: asyncio.Future[dp.Frame] | None) -> None:
    """Stop the future of a request that was not sent (noting an error already set on it)."""
    if reply is None:
        return
    if reply.done() and not reply.cancelled():
        reply.exception()
    else:
        reply.cancel()


async def close_peers(peers: Sequence[RemoteConversation]) -> None:
    """End these conversations, even when the caller is being cancelled.

    A client hanging up cancels the task that drives a chain, and under Starlette (anyio)
    every later ``await`` of that task is cancelled again: closing peers one by one in it
    would stop at the first, leaving the others holding a cache for a session nobody will
    finish. So the closing runs in a task of its own, shielded from the caller's cancellation.
    """
    if not peers:
        return
    closing = asyncio.get_running_loop().create_task(_close_each(peers), name="phage-dataplane-close")
    _CLOSING.add(closing)
    closing.add_done_callback(_CLOSING.discard)
    await asyncio.shield(closing)


_CLOSING: set[asyncio.Task[None]] = set()
"""Closings under way (the event loop keeps only weak references to tasks)."""


async def _close_each(peers: Sequence[RemoteConversation]) -> None:
    for peer in peers:
        with contextlib.suppress(Exception):
            await peer.close()


def issue_identity(ca: Any, identity: Any) -> TLSIdentity:
    """A data-plane identity for ``identity`` (a NodeIdentity) signed by ``ca`` (a CertificateAuthority).

    For tests, benchmarks and a coordinator that drives chains itself; nodes get theirs at Register.
    """
    from phage.pki.ca import make_csr

    cert_pem, _serial = ca.sign_node_csr(make_csr(identity.tls_key, identity.node_id), identity.node_id)
    return TLSIdentity(identity.node_id, identity.tls_key_pem(), cert_pem, ca.cert_pem)
