"""The coordinator's own certificate authority.

Created on the coordinator's first start and kept in its data directory. It
signs the coordinator's server certificate and every node's client
certificate; nodes pin its fingerprint on first contact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from phage.errors import InvalidInput

CA_COMMON_NAME = "phage coordinator CA"
NODE_CERT_DAYS = 365
CA_DAYS = 3650


def fingerprint(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of a certificate's DER encoding: what nodes pin."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "phage"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by this user only from its first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _save(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class CertificateAuthority:
    """A CA key and certificate, able to issue server and node certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA private key in PEM (used only by the enrollment listener)."""
        return _key_pem(self.key)

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the CA certificate."""
        return fingerprint(self.cert_pem)

    @classmethod
    def load_or_create(cls, pki_dir: Path) -> CertificateAuthority:
        """Load the CA from ``pki_dir``, creating a new one on first start."""
        key_path, cert_path = pki_dir / "ca-key.pem", pki_dir / "ca.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InvalidInput(f"{key_path} is not an EC key", field="ca")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(CA_COMMON_NAME)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # The enrollment listener presents the CA certificate itself, so a
            # node can fetch it unverified, check the pinned fingerprint, and
            # then verify the TLS session against it (see pki.enroll).
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("phage-ca")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(key, cert)
        _save(key_path, _key_pem(key), private=True)
        _save(cert_path, ca.cert_pem, private=False)
        return ca

    def issue_server_cert(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """A server certificate valid for ``hosts`` (names or IPs): (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        for host in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                if host and host != "localhost":
                    sans.append(x509.DNSName(host))
        for ip in ("127.0.0.1", "::1"):
            addr = x509.IPAddress(ipaddress.ip_address(ip))
            if addr not in sans:
                sans.append(addr)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("phage coordinator"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=NODE_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def sign_node_csr(self, csr_pem: bytes, node_id: str) -> tuple[bytes, str]:
        """Sign a node's CSR with common name = ``node_id``: (cert PEM, serial hex).

        The subject the node asked for is ignored: the CA alone decides the
        name, which is what makes "a node may only act as itself" checkable
        from the certificate on every RPC.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidInput("csr_pem is not a PEM certificate request", field="csr_pem") from exc
        if not csr.is_signature_valid:
            raise InvalidInput("csr_pem signature does not verify", field="csr_pem")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InvalidInput("csr_pem must carry an ECDSA key", field="csr_pem")
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=NODE_CERT_DAYS))
            # Server use too: nodes serving sharded-model stages accept data-plane connections from
            # other nodes, which check the name below, a name only this CA gives to this node id.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(node_dns_name(node_id))]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), format(serial, "x")


def node_dns_name(node_id: str) -> str:
    """The DNS name in a node's certificate: a hash of its id (ids hold ``+/=``, which names cannot).

    A data-plane client sets this as the TLS target name, so the handshake succeeds only
    with the node it meant to reach.
    """
    return f"n{hashlib.sha256(node_id.encode()).hexdigest()[:40]}.node.phage"


def make_csr(tls_key: ec.EllipticCurvePrivateKey, node_id: str) -> bytes:
    """A CSR for the node's TLS key (the CA overrides the subject anyway)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .sign(tls_key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def new_token() -> str:
    """A join token or API key secret: 32 bytes of randomness, URL-safe."""
    return secrets.token_urlsafe(32)
