"""The enrollment port: Register only, to peers that hold no certificate yet.

Anyone who can reach this port can send to it, so it is served by its own gRPC server with
limits of its own (``CoordinatorSettings``): a small largest message, so an oversized Register
is refused by gRPC before it is buffered, and per-source token buckets
(:mod:`phage.coordinator.ratelimit`) on

* Register attempts of any outcome,
* failed ones (wrong join token, bad identity signature): a source that keeps failing is
  refused for a while even with the right token, which makes guessing the token slow,
* new node identities (what an open-mode pool would otherwise let one host create without end).

Every other RPC is answered ``UNIMPLEMENTED`` here: node RPCs need the mutual-TLS port.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from phage.coordinator.ratelimit import Rate, RateLimiter, grpc_peer_host
from phage.coordinator.settings import CoordinatorSettings
from phage.errors import InvalidInput, PhageError, Unauthenticated
from phage.pki.identity import node_id_from_public_key
from phage.protocol import convert
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc

log = logging.getLogger("phage.enrollment")

Register = Callable[..., Awaitable[Any]]
"""``Coordinator.register``: keyword arguments in, a ``Registration`` out."""


def enrollment_options(settings: CoordinatorSettings) -> list[tuple[str, int]]:
    """gRPC server options for the enrollment port: small messages, few streams per connection."""
    return [
        ("grpc.max_receive_message_length", settings.enroll_max_message_bytes),
        ("grpc.max_send_message_length", 1024 * 1024),
        ("grpc.max_concurrent_streams", 4),
        ("grpc.max_metadata_size", 16 * 1024),
        ("grpc.http2.max_frame_size", 16 * 1024),
        ("grpc.so_reuseport", 0),
    ]


class EnrollmentLimits:
    """The three per-source budgets Register is checked against."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        s = settings
        self.attempts = RateLimiter(Rate(s.register_burst, s.register_per_s), "Register attempts")
        self.failures = RateLimiter(
            Rate(s.join_failures_burst, s.join_failures_per_s), "failed Register attempts"
        )
        self.new_nodes = RateLimiter(Rate(s.new_nodes_burst, s.new_nodes_per_s), "new node identities")


class EnrollmentServicer(pb_grpc.PhageCoordinatorServicer):
    """Register, throttled per source; nothing else."""

    def __init__(
        self,
        *,
        register: Register,
        is_known: Callable[[str], bool],
        settings: CoordinatorSettings,
        limits: EnrollmentLimits | None = None,
    ) -> None:
        self._register = register
        self._is_known = is_known
        self._settings = settings
        self.limits = limits or EnrollmentLimits(settings)

    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterResponse:
        """Admit a node (see ``Coordinator.register``) unless its source is over a budget."""
        source = grpc_peer_host(context.peer())
        try:
            self.limits.attempts.take(source)
            self.limits.failures.check(source)
            try:
                node_id = node_id_from_public_key(request.identity_public_key)
            except InvalidInput:
                self.limits.failures.charge(source)
                raise
            if not self._is_known(node_id):
                self.limits.new_nodes.take(source)
            try:
                reg = await self._register(
                    join_token=request.join_token,
                    public_key=request.identity_public_key,
                    csr_pem=request.csr_pem,
                    timestamp_ms=request.timestamp_unix_ms,
                    signature=request.identity_signature,
                    info=convert.node_info_to_dict(request.info),
                )
            except Unauthenticated:
                self.limits.failures.charge(source)
                raise
        except PhageError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise  # unreachable: abort raises
        s = self._settings
        return pb.RegisterResponse(
            node_id=reg.node_id,
            client_certificate_pem=reg.client_cert_pem,
            ca_certificate_pem=reg.ca_cert_pem,
            heartbeat_interval_s=s.heartbeat_interval_s,
            missed_heartbeats_dead=s.missed_heartbeats,
            status=reg.status,
        )
