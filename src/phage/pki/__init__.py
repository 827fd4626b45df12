"""Keys and certificates: the coordinator's CA, node identities, enrollment."""

from phage.pki.ca import CertificateAuthority, fingerprint
from phage.pki.identity import NodeIdentity, node_id_from_public_key, verify_signature

__all__ = [
    "CertificateAuthority",
    "NodeIdentity",
    "fingerprint",
    "node_id_from_public_key",
    "verify_signature",
]
