"""Enrollment and the node's mutual-TLS channel to the coordinator."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from phage.errors import PermissionDenied, Unauthenticated
from phage.pki.ca import fingerprint, make_csr
from phage.pki.enroll import fetch_pinned_ca
from phage.pki.identity import NodeIdentity, register_signing_payload
from phage.protocol import convert
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc

log = logging.getLogger("phage.node")

CERT_FILE = "node-cert.pem"
CA_FILE = "ca.pem"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 80 * 1024 * 1024),
    ("grpc.max_send_message_length", 80 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass(frozen=True)
class Credentials:
    """A node's certificate and the CA it trusts."""

    cert_pem: bytes
    ca_pem: bytes


def load_credentials(key_dir: Path, pinned: str | None) -> Credentials | None:
    """Saved credentials, if they exist and match the pinned CA (when one is given)."""
    cert, ca = key_dir / CERT_FILE, key_dir / CA_FILE
    if not (cert.exists() and ca.exists()):
        return None
    ca_pem = ca.read_bytes()
    if pinned and fingerprint(ca_pem) != pinned.strip().lower():
        return None
    cert_pem = cert.read_bytes()
    if x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp() < time.time() + 3600:
        return None
    return Credentials(cert_pem, ca_pem)


def save_credentials(key_dir: Path, creds: Credentials) -> None:
    """Keep the certificate and CA for the next start."""
    key_dir.mkdir(parents=True, exist_ok=True)
    (key_dir / CERT_FILE).write_bytes(creds.cert_pem)
    (key_dir / CA_FILE).write_bytes(creds.ca_pem)


async def enroll(
    identity: NodeIdentity,
    *,
    enroll_address: str,
    join_token: str,
    ca_fingerprint: str,
    info: dict[str, object],
) -> Credentials:
    """Register with the coordinator: pin its CA, send the CSR, receive a certificate."""
    ca_pem = fetch_pinned_ca(enroll_address, ca_fingerprint)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = [("grpc.ssl_target_name_override", "phage-ca")]
    csr = make_csr(identity.tls_key, identity.node_id)
    ts = int(time.time() * 1000)
    request = pb.RegisterRequest(
        join_token=join_token,
        identity_public_key=identity.public_key_raw,
        csr_pem=csr,
        timestamp_unix_ms=ts,
        identity_signature=identity.sign(register_signing_payload(csr, ts, join_token)),
        info=convert.node_info_from_dict(info),
    )
    async with grpc.aio.secure_channel(enroll_address, creds, options=options) as channel:
        stub = pb_grpc.PhageCoordinatorStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.Register(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(f"registration refused: {exc.details()}") from None
            if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(f"registration refused: {exc.details()}") from None
            raise
    if response.node_id != identity.node_id:
        raise PermissionDenied("coordinator answered for another node id")
    return Credentials(response.client_certificate_pem, ca_pem)


def open_channel(
    address: str, identity: NodeIdentity, creds: Credentials, *, tls_name: str | None = None
) -> grpc.aio.Channel:
    """The mutual-TLS channel every RPC but Register uses.

    ``tls_name``: check the coordinator's certificate against this name rather than ``address``
    (an address that a name resolved to; see node/endpoints.py).
    """
    channel_creds = grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=identity.tls_key_pem(),
        certificate_chain=creds.cert_pem,
    )
    options = [*CHANNEL_OPTIONS, *([("grpc.ssl_target_name_override", tls_name)] if tls_name else [])]
    return grpc.aio.secure_channel(address, channel_creds, options=options)


def secure_key_dir(key_dir: Path) -> None:
    """Create the key directory readable by its owner only."""
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
