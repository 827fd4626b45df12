"""Trusting a pool's own CA over HTTPS the way nodes do: by the fingerprint in the join line.

The CA certificate is public (``GET /api/ca``). It is fetched once without verification, accepted
only if its SHA-256 matches the pinned fingerprint, kept in a cache, and from then on every
connection is verified against it, name checks included. An attacker in the middle can serve a
different CA, but not one with the pinned fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

import httpx

from phage.errors import InvalidInput, Unauthenticated


def ca_fingerprint(pem: str) -> str:
    """``sha256:<hex>`` of a PEM certificate's DER bytes (the same value ``phage.pki`` computes)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as exc:
        raise InvalidInput(f"not a PEM certificate: {exc}", field="ca_cert") from None
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _normalise(fingerprint: str) -> str:
    hexpart = fingerprint.lower().removeprefix("sha256:").replace(":", "")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidInput(
            f"{fingerprint!r} is not a CA fingerprint like sha256:<64 hex digits>", field="ca_fingerprint"
        )
    return "sha256:" + hexpart


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/phage/ca`` (``~/.cache/phage/ca``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "phage" / "ca"


def pinned_ca(url: str, fingerprint: str, *, cache_dir: Path | None = None, timeout: float = 10.0) -> Path:
    """The pool CA's certificate file, fetched from ``url`` if not cached, checked against the pin."""
    expected = _normalise(fingerprint)
    cache = cache_dir or default_cache_dir()
    path = cache / f"{expected.removeprefix('sha256:')}.pem"
    if path.is_file() and ca_fingerprint(path.read_text()) == expected:
        return path
    # Unverified on purpose: nothing is trusted until the certificate matches the pin below.
    response = httpx.get(url.rstrip("/") + "/api/ca", verify=False, timeout=timeout)
    response.raise_for_status()
    pem = response.text
    got = ca_fingerprint(pem)
    if got != expected:
        raise Unauthenticated(
            f"the coordinator at {url} presents CA {got}, not the pinned {expected}: "
            "check the fingerprint, or someone is between you and the pool",
            field="ca_fingerprint",
        )
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(pem)
    return path


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly ``ca_file`` (hostname checks on)."""
    return ssl.create_default_context(cafile=str(ca_file))


def verify_for(url: str, *, ca_cert: Path | None, ca_fingerprint: str | None) -> ssl.SSLContext | bool:
    """What httpx's ``verify`` should be: the pinned CA, a given CA file, or the system's trust."""
    if not url.startswith("https://"):
        return True
    if ca_cert is not None:
        return tls_context(ca_cert)
    if ca_fingerprint:
        return tls_context(pinned_ca(url, ca_fingerprint))
    return True
