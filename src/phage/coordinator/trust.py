"""Checking what nodes claim: attestations, re-verification, reputation and quarantine.

Every result must carry the node's signed attestation; the coordinator rebuilds
the record from its own knowledge (the assignment it issued, the input it sent,
the outputs it received), so a node that alters an output after signing, signs
with another key, replays an old attestation, or reports on an assignment it
was never given is refused — and quarantined. A generate result that claims a
pass is re-verified in the coordinator's sandbox when the node is not trusted,
and for a configurable sample of trusted nodes.

This module only judges: each check answers with the refusal (or None). What a
refusal costs the node (reputation, quarantine) is applied by the result
pipeline (``coordinator/results.py``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from phage.coordinator.pool import LiveNode, OpenAttempt
from phage.coordinator.verify import reverify
from phage.domain import TaskResult
from phage.errors import PermissionDenied, PhageError
from phage.pki.attestation import AttestationRecord, output_hash, verify_attestation, verify_batch
from phage.sandbox import Sandbox
from phage.store.blobs import BlobStore

log = logging.getLogger("phage.trust")


def claimed_record(assignment_id: str, result: TaskResult) -> AttestationRecord:
    """The record as the node claims it: what its signature must cover."""
    return AttestationRecord(
        assignment_id=assignment_id,
        task_id=result.task_id,
        sandbox_sha256=result.sandbox_sha256,
        input_sha256=result.input_sha256,
        output_sha256=result.output_sha256,
        engine=result.engine,
        model=result.model,
        exit_code=result.exit_code,
        passed=result.passed,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )


class TrustGuard:
    """Vets each result before the store records it."""

    def __init__(self, blobs: BlobStore, verify_dir: Path, reverify_sample: float) -> None:
        self.blobs = blobs
        self.verify_dir = verify_dir
        self.reverify_sample = reverify_sample
        self.verify_sandbox: Sandbox | None = None
        """Where claimed passes are re-run; probed when the coordinator starts (None: none works here)."""
        self.rng = random.Random()

    def check_attestation(
        self, live: LiveNode, att: OpenAttempt, result: TaskResult, *, signed: bool = False
    ) -> PhageError | None:
        """Refuse a result whose attestation does not match what the coordinator knows.

        The signature authenticates the node's claims (``signed``: already checked for a
        whole batch); the claims must then equal what the coordinator computes itself.
        """
        claimed = claimed_record(att.id, result)
        if not signed:
            try:
                signature = bytes.fromhex(result.attestation)
            except ValueError:
                signature = b""
            if not verify_attestation(live.node.id, claimed, signature):
                return PermissionDenied(
                    "attestation signature does not verify with this node's key", field="attestation"
                )
        if claimed.task_id != att.task_id:
            return PermissionDenied(
                f"attestation names task {claimed.task_id!r}, not {att.task_id!r}", field="attestation"
            )
        if claimed.input_sha256 != att.input_sha256:
            return PermissionDenied(
                f"attestation input hash {claimed.input_sha256[:12]!r} does not match the assignment's "
                f"{att.input_sha256[:12]!r}",
                field="attestation",
            )
        actual = output_hash([(o.path, o.sha256) for o in result.outputs], result.output_text)
        if claimed.output_sha256 != actual:
            return PermissionDenied(
                "attestation output hash does not match the reported outputs", field="attestation"
            )
        return None

    def check_batch(self, live: LiveNode, items: list[tuple[str, TaskResult]], signature: bytes) -> bool:
        """Does one signature cover every result of a batch, as claimed?"""
        records = [claimed_record(aid, result) for aid, result in items]
        return verify_batch(live.node.id, records, signature)

    def wants_reverify(self, live: LiveNode, att: OpenAttempt, result: TaskResult) -> bool:
        """Re-run the verifier for untrusted nodes, and a sample of trusted ones."""
        if att.kind != "generate" or result.passed is not True or result.error:
            return False
        if not live.node.trusted:
            return (
                True  # and without a sandbox, reverify() refuses: untrusted passes are never taken on faith
            )
        # Sampling trusted nodes needs a sandbox to check in; without one the sample is skipped.
        return self.verify_sandbox is not None and self.rng.random() < self.reverify_sample

    async def reverify(self, att: OpenAttempt, result: TaskResult) -> PhageError | None:
        """The coordinator's own verifier run; a failed claimed pass is a lie."""
        sandbox = self.verify_sandbox
        if sandbox is None:
            return PermissionDenied(
                "this coordinator cannot re-verify (no sandbox) and the node is not trusted"
            )
        digest = att.spec.workspace
        generate = att.spec.generate
        if generate is None:
            return PermissionDenied("only generate results are re-verified", field="kind")
        workspace = self.blobs.read(digest) if digest else None
        verdict = await reverify(sandbox, self.verify_dir, workspace, generate, result.output_text)
        if not verdict.passed:
            return PermissionDenied(
                f"claimed pass failed re-verification (verifier exit code {verdict.exit_code})",
                field="passed",
            )
        return None
