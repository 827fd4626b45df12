"""Signing a result: the node's half of the attestation (see pki.attestation)."""

from __future__ import annotations

from phage.domain import ReceivedAssignment, TaskResult
from phage.pki.attestation import AttestationRecord, batch_payload, output_hash
from phage.pki.identity import NodeIdentity


def attest_result(
    a: ReceivedAssignment, result: TaskResult, sandbox: str, sandbox_sha256: str
) -> AttestationRecord:
    """Fill in the hashes of ``result`` and return the record the node will sign."""
    result.task_id = a.task_id
    result.sandbox = sandbox
    result.sandbox_sha256 = sandbox_sha256
    result.input_sha256 = a.input_sha256
    result.output_sha256 = output_hash([(o.path, o.sha256) for o in result.outputs], result.output_text)
    return AttestationRecord(
        assignment_id=a.assignment_id,
        task_id=a.task_id,
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


def sign_result(
    identity: NodeIdentity, a: ReceivedAssignment, result: TaskResult, sandbox: str, sandbox_sha256: str
) -> TaskResult:
    """Fill in the hashes of ``result`` and sign its own attestation; returns the same result."""
    record = attest_result(a, result, sandbox, sandbox_sha256)
    result.attestation = identity.sign(record.payload()).hex()
    return result


def sign_batch(identity: NodeIdentity, records: list[AttestationRecord]) -> bytes:
    """One signature over a batch of attestation records (pki.attestation.batch_payload)."""
    return identity.sign(batch_payload(records))
