"""Node identity: an Ed25519 key pair made on the node, whose public key is the node id.

The private key never leaves the node. The TLS client key is a separate ECDSA
P-256 key because gRPC's TLS stack offers no Ed25519 signature algorithms; the
Ed25519 identity signs the enrollment request (binding the TLS key to the
identity) and, later, result attestations.
"""

from __future__ import annotations

import base64
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from phage.errors import InvalidInput

IDENTITY_FILE = "identity.pem"
TLS_KEY_FILE = "tls-key.pem"


def node_id_from_public_key(raw: bytes) -> str:
    """The node id: standard base64 of the raw 32-byte Ed25519 public key (sandrun's worker_id)."""
    if len(raw) != 32:
        raise InvalidInput("identity_public_key must be 32 raw bytes", field="identity_public_key")
    return base64.b64encode(raw).decode("ascii")


def public_key_from_node_id(node_id: str) -> ed25519.Ed25519PublicKey:
    """Parse a node id back into its Ed25519 public key."""
    try:
        raw = base64.b64decode(node_id, validate=True)
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidInput(f"not a valid node id: {node_id!r}", field="node_id") from exc


def verify_signature(node_id: str, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is the node's Ed25519 signature over ``payload``."""
    try:
        public_key_from_node_id(node_id).verify(signature, payload)
    except (InvalidSignature, InvalidInput):
        return False
    return True


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class NodeIdentity:
    """A node's Ed25519 identity key and its TLS client key, kept in the node's key directory."""

    signing_key: ed25519.Ed25519PrivateKey
    tls_key: ec.EllipticCurvePrivateKey

    @functools.cached_property
    def public_key_raw(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @functools.cached_property
    def node_id(self) -> str:
        """The base64 public key that names this node everywhere."""
        return node_id_from_public_key(self.public_key_raw)

    def sign(self, payload: bytes) -> bytes:
        """Ed25519 signature over ``payload``."""
        return self.signing_key.sign(payload)

    def tls_key_pem(self) -> bytes:
        """PEM of the TLS client key, for the gRPC channel."""
        return _pem(self.tls_key)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh identity and TLS key."""
        return cls(ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, key_dir: Path) -> NodeIdentity:
        """Load the identity kept in ``key_dir``, creating it (mode 0600) on first use."""
        ident_path, tls_path = key_dir / IDENTITY_FILE, key_dir / TLS_KEY_FILE
        if ident_path.exists():
            signing = serialization.load_pem_private_key(ident_path.read_bytes(), None)
            if not isinstance(signing, ed25519.Ed25519PrivateKey):
                raise InvalidInput(f"{ident_path} is not an Ed25519 private key", field="key")
        else:
            signing = ed25519.Ed25519PrivateKey.generate()
            _write_private(ident_path, _pem(signing))
        if tls_path.exists():
            tls = serialization.load_pem_private_key(tls_path.read_bytes(), None)
            if not isinstance(tls, ec.EllipticCurvePrivateKey):
                raise InvalidInput(f"{tls_path} is not an EC private key", field="key")
        else:
            tls = ec.generate_private_key(ec.SECP256R1())
            _write_private(tls_path, _pem(tls))
        return cls(signing, tls)


def register_signing_payload(csr_pem: bytes, timestamp_unix_ms: int, join_token: str) -> bytes:
    """What the identity key signs at Register: binds the TLS key (CSR) to the identity.

    The token is included by hash so a captured request cannot be replayed
    against a pool with another token, and the timestamp bounds its lifetime.
    """
    import hashlib

    token_hash = hashlib.sha256(join_token.encode()).hexdigest()
    return b"phage-register-v1\n" + csr_pem + f"\n{timestamp_unix_ms}\n{token_hash}".encode()
