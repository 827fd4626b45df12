"""First contact: fetch the coordinator's CA, check it against the pinned fingerprint.

gRPC's TLS cannot ask for a client certificate without requiring one, so the
coordinator serves Register on a separate enrollment port whose TLS
certificate is the CA certificate itself. A node reads that certificate with
an unverified handshake, compares its fingerprint to the one it was given
(the paste-ready ``phage node`` line carries it), and from then on verifies
every TLS session against that CA.
"""

from __future__ import annotations

import hmac
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from phage.errors import PermissionDenied
from phage.pki.ca import fingerprint


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def fetch_pinned_ca(address: str, pinned: str, timeout: float = 10.0) -> bytes:
    """The CA certificate PEM served at ``address``, if its fingerprint equals ``pinned``."""
    host, port = split_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # authenticated below by the pinned fingerprint
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as sock, ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise PermissionDenied(f"{address} presented no certificate")
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    got = fingerprint(pem)
    if not hmac.compare_digest(got.lower(), pinned.strip().lower()):
        raise PermissionDenied(
            f"coordinator CA fingerprint mismatch: expected {pinned}, got {got}", field="ca_fingerprint"
        )
    return pem
