"""Signed attestations: what a node claims about one result, under its identity key.

The record is canonical JSON (sorted keys, no spaces) of: assignment id, task
id, sandbox configuration hash, input hash, output hash, engine and model, exit
code, pass verdict and token counts. The node signs it with its Ed25519
identity; the coordinator rebuilds the record from what it knows and what the
node reported, recomputes the hashes it can, and verifies the signature with
the node's registered key (its node id). Because the assignment id is inside
the signed record and assignment ids are single-use, an old attestation cannot
be replayed for a new assignment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from phage.pki.identity import verify_signature

VERSION = 1


def canonical(data: Any) -> bytes:
    """Deterministic JSON bytes of ``data``."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


GENERATE_WIRE_FIELDS = (
    "prompt",
    "model",
    "verifier",
    "max_tokens",
    "temperature",
    "output_path",
    "extract",
    "timeout_s",
)


def input_hash(
    *,
    task_id: str,
    kind: str,
    manifest: dict[str, Any] | None,
    generate: dict[str, Any] | None,
    workspace_sha256: str,
    isolation: str,
) -> str:
    """Hash of everything an assignment gives a node; both sides compute it from their own copy.

    Generate fields are those sent on the wire, the temperature rounded as a
    float32 round trip would leave it, so the coordinator (from its stored spec)
    and the node (from the message it received) agree exactly.
    """
    gen = None
    if generate is not None:
        gen = {k: generate[k] for k in GENERATE_WIRE_FIELDS}
        gen["temperature"] = round(float(gen["temperature"]), 4)
        gen["max_tokens"], gen["timeout_s"] = int(gen["max_tokens"]), int(gen["timeout_s"])
    view = {
        "task_id": task_id,
        "kind": kind,
        "manifest": manifest,
        "generate": gen,
        "workspace_sha256": workspace_sha256,
        "isolation": isolation,
    }
    return sha256_hex(canonical(view))


def output_hash(outputs: Iterable[tuple[str, str]], output_text: str) -> str:
    """Hash of what a node produced: output files (path, sha256) and the generated text."""
    return sha256_hex(canonical({"files": sorted(outputs), "text": output_text}))


def sandbox_hash(description: dict[str, Any]) -> str:
    """Hash of a sandbox backend's configuration (``Sandbox.describe()``)."""
    return sha256_hex(canonical(description))


@dataclass(frozen=True, slots=True)
class AttestationRecord:
    """The fields a node signs for one result."""

    assignment_id: str
    task_id: str
    sandbox_sha256: str
    input_sha256: str
    output_sha256: str
    engine: str
    model: str
    exit_code: int
    passed: bool | None
    prompt_tokens: int
    completion_tokens: int

    def payload(self) -> bytes:
        """The exact bytes signed."""
        # Built by hand rather than with dataclasses.asdict, which deep-copies: this runs per result.
        values = {name: getattr(self, name) for name in _RECORD_FIELDS}
        return b"phage-attestation-v1\n" + canonical({"v": VERSION, **values})


_RECORD_FIELDS = tuple(f.name for f in fields(AttestationRecord))


def verify_attestation(node_id: str, record: AttestationRecord, signature: bytes) -> bool:
    """True when ``signature`` is ``node_id``'s signature over ``record``."""
    return bool(signature) and verify_signature(node_id, signature, record.payload())


def batch_payload(records: list[AttestationRecord]) -> bytes:
    """What one signature covers for a batch of results: the hash of each record, in order.

    Signing a batch costs one Ed25519 operation instead of one per result, on
    the node and on the coordinator; every record is still bound by the
    signature, so changing any result breaks it.
    """
    return b"phage-attestation-batch-v1\n" + b"\n".join(sha256_hex(r.payload()).encode() for r in records)


def verify_batch(node_id: str, records: list[AttestationRecord], signature: bytes) -> bool:
    """True when ``signature`` is ``node_id``'s signature over the batch of ``records``."""
    return bool(signature) and bool(records) and verify_signature(node_id, signature, batch_payload(records))
