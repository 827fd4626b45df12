"""A lying node is caught and quarantined: each way of lying is its own test.

The liar is a real gRPC client with its own identity and certificate, joined
over mTLS like any node; it fetches real assignments and then reports falsely.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from phage.domain import TaskResult
from phage.node.attest import attest_result, sign_batch, sign_result
from phage.node.connection import enroll, open_channel
from phage.pki import NodeIdentity
from phage.protocol.convert import assignment_from_pb, result_to_pb
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.testing import CoordinatorProcess, wait_until

VERIFIER = "grep -q 'return a + b' output.txt"


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    # re-verify every claimed pass, and use the none backend so the check runs anywhere
    env = {"PHAGE_REVERIFY_SAMPLE": "1.0", "PHAGE_VERIFY_SANDBOX": "none"}
    c = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=5.0, env=env).start()
    yield c
    c.stop()


@dataclass
class Liar:
    """A node that fetches honestly and reports however the test likes."""

    identity: NodeIdentity
    stub: pb_grpc.PhageCoordinatorStub

    @property
    def id(self) -> str:
        return self.identity.node_id

    async def fetch(self) -> pb.TaskAssignment:
        got = await self.stub.FetchTask(
            pb.FetchTaskRequest(node_id=self.id, max_tasks=1, wait_ms=5000), timeout=10
        )
        assert len(got.assignments) == 1
        return got.assignments[0]

    async def submit(self, msg: pb.TaskResult) -> pb.ResultAck:
        ack: pb.ResultAck = await self.stub.SubmitResult(msg, timeout=10)
        return ack

    def signed(self, a: pb.TaskAssignment, result: TaskResult, key: NodeIdentity | None = None) -> TaskResult:
        return sign_result(key or self.identity, assignment_from_pb(a), result, "none", "")


@pytest.fixture
async def liar(coord: CoordinatorProcess) -> AsyncIterator[Liar]:
    identity = NodeIdentity.generate()
    info = coord.info
    creds = await enroll(
        identity,
        enroll_address=coord.enroll_address,
        join_token=info["join_token"],
        ca_fingerprint=info["ca_fingerprint"],
        info={
            "name": "liar",
            "sandboxes": ["none"],
            "loaded_model": "tiny-llama",
            "engines": ["transformers"],
        },
    )
    async with open_channel(coord.grpc_address, identity, creds) as channel:
        yield Liar(identity, pb_grpc.PhageCoordinatorStub(channel))


def _node(coord: CoordinatorProcess, node_id: str) -> dict[str, Any]:
    with coord.client() as c:
        return next(n for n in c.get("/api/nodes").json()["nodes"] if n["id"] == node_id)


def _submit(coord: CoordinatorProcess, task: dict[str, Any]) -> str:
    with coord.client() as c:
        resp = c.post("/api/tasks", json=task)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])


def _generate_task() -> dict[str, Any]:
    return {"kind": "generate", "prompt": "def add(a, b):", "model": "tiny-llama", "verifier": VERIFIER}


def _generated(text: str, passed: bool) -> TaskResult:
    return TaskResult(
        exit_code=0 if passed else 1,
        passed=passed,
        output_text=text,
        completion_tokens=7,
        prompt_tokens=4,
        engine="transformers",
        model="tiny-llama",
    )


def _assert_quarantined(coord: CoordinatorProcess, liar: Liar, words: str, task_id: str) -> None:
    node = _node(coord, liar.id)
    assert node["quarantined"], node
    assert words in node["quarantine_reason"], node["quarantine_reason"]
    with coord.client() as c:
        task = c.get(f"/api/tasks/{task_id}").json()
    assert task["state"] == "queued", "the lie is discarded and the task offered to honest nodes"
    assert task["result"] is None


async def _refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    code: grpc.StatusCode = err.value.code()
    return code


async def test_claimed_pass_for_failing_output_is_caught_by_reverification(
    coord: CoordinatorProcess, liar: Liar
) -> None:
    task_id = _submit(coord, _generate_task())
    a = await liar.fetch()
    lie = liar.signed(a, _generated("print('not the answer')", passed=True))
    code = await _refused(liar.submit(result_to_pb(liar.id, a.assignment_id, task_id, lie)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    _assert_quarantined(coord, liar, "re-verification", task_id)
    assert _node(coord, liar.id)["reputation"].get("failed_validation") == 1


async def test_honest_pass_is_reverified_and_accepted(coord: CoordinatorProcess, liar: Liar) -> None:
    task_id = _submit(coord, _generate_task())
    a = await liar.fetch()
    honest = liar.signed(a, _generated("def add(a, b):\n    return a + b\n", passed=True))
    ack = await liar.submit(result_to_pb(liar.id, a.assignment_id, task_id, honest))
    assert ack.accepted
    with coord.client() as c:
        assert c.get(f"/api/tasks/{task_id}").json()["state"] == "verified"
    node = _node(coord, liar.id)
    assert not node["quarantined"] and node["reputation"].get("validated") == 1


async def test_output_altered_after_signing_is_refused(coord: CoordinatorProcess, liar: Liar) -> None:
    task_id = _submit(coord, _generate_task())
    a = await liar.fetch()
    signed = liar.signed(a, _generated("def add(a, b):\n    return a + b\n", passed=True))
    altered = replace(signed, output_text="def add(a, b):\n    return a + b  # and something else\n")
    code = await _refused(liar.submit(result_to_pb(liar.id, a.assignment_id, task_id, altered)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    _assert_quarantined(coord, liar, "output hash", task_id)


async def test_altered_output_with_recomputed_hash_fails_the_signature(
    coord: CoordinatorProcess, liar: Liar
) -> None:
    task_id = _submit(coord, _generate_task())
    a = await liar.fetch()
    signed = liar.signed(a, _generated("def add(a, b):\n    return a + b\n", passed=True))
    # change the claim (token count) after signing, with hashes consistent: only the signature can tell
    altered = replace(signed, completion_tokens=1)
    code = await _refused(liar.submit(result_to_pb(liar.id, a.assignment_id, task_id, altered)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    _assert_quarantined(coord, liar, "signature", task_id)


async def test_signing_with_another_key_is_refused(coord: CoordinatorProcess, liar: Liar) -> None:
    task_id = _submit(coord, _generate_task())
    a = await liar.fetch()
    forged = liar.signed(
        a, _generated("def add(a, b):\n    return a + b\n", passed=True), key=NodeIdentity.generate()
    )
    code = await _refused(liar.submit(result_to_pb(liar.id, a.assignment_id, task_id, forged)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    _assert_quarantined(coord, liar, "signature", task_id)


async def test_replayed_attestation_is_refused(coord: CoordinatorProcess, liar: Liar) -> None:
    first = _submit(coord, {"kind": "noop", "priority": 10})
    a1 = await liar.fetch()
    honest = liar.signed(a1, TaskResult(exit_code=0))
    assert (await liar.submit(result_to_pb(liar.id, a1.assignment_id, first, honest))).accepted
    second = _submit(coord, {"kind": "noop"})
    a2 = await liar.fetch()
    assert a2.task_id == second
    # the old, validly signed attestation, presented for the new assignment
    replay = result_to_pb(liar.id, a2.assignment_id, second, honest)
    code = await _refused(liar.submit(replay))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    _assert_quarantined(coord, liar, "attestation", second)
    with coord.client() as c:
        assert c.get(f"/api/tasks/{first}").json()["state"] == "verified"


async def test_result_for_an_assignment_never_given_is_refused(coord: CoordinatorProcess, liar: Liar) -> None:
    task_id = _submit(coord, {"kind": "noop"})
    fake = pb.TaskAssignment(
        assignment_id="a-00000000000deadbeef0000", task_id=task_id, kind="noop", isolation="any"
    )
    msg = result_to_pb(liar.id, fake.assignment_id, task_id, liar.signed(fake, TaskResult(exit_code=0)))
    code = await _refused(liar.submit(msg))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    node = _node(coord, liar.id)
    assert node["quarantined"] and "unknown assignment" in node["quarantine_reason"]
    with coord.client() as c:
        assert c.get(f"/api/tasks/{task_id}").json()["state"] == "queued"


async def test_quarantined_node_gets_no_work_until_released(coord: CoordinatorProcess, liar: Liar) -> None:
    with coord.client() as c:
        assert c.post(f"/api/nodes/{liar.id}/quarantine", params={"reason": "by hand"}).status_code == 200
    task_id = _submit(coord, {"kind": "noop"})
    got = await liar.stub.FetchTask(pb.FetchTaskRequest(node_id=liar.id, max_tasks=1, wait_ms=300), timeout=5)
    assert not got.assignments
    with coord.client() as c:
        released = c.post(f"/api/nodes/{liar.id}/release")
        assert released.status_code == 200 and not released.json()["quarantined"]
    a = await liar.fetch()
    assert a.task_id == task_id
    wait_until(lambda: not _node(coord, liar.id)["quarantined"], 5, what="release visible")


async def test_result_altered_inside_a_signed_batch_is_refused(coord: CoordinatorProcess, liar: Liar) -> None:
    ids = [_submit(coord, {"kind": "noop"}) for _ in range(2)]
    got = await liar.stub.FetchTask(
        pb.FetchTaskRequest(node_id=liar.id, max_tasks=2, wait_ms=5000), timeout=10
    )
    assert sorted(a.task_id for a in got.assignments) == sorted(ids)
    results = [TaskResult(exit_code=0) for _ in got.assignments]
    records = [
        attest_result(assignment_from_pb(a), r, "none", "")
        for a, r in zip(got.assignments, results, strict=True)
    ]
    signature = sign_batch(liar.identity, records)
    results[1].exit_code = 1  # changed after the batch was signed
    batch = pb.ResultBatch(
        node_id=liar.id,
        results=[
            result_to_pb(liar.id, a.assignment_id, a.task_id, r)
            for a, r in zip(got.assignments, results, strict=True)
        ],
        batch_signature=signature,
    )
    resp = await liar.stub.SubmitResults(batch, timeout=10)
    assert [ack.accepted for ack in resp.acks] == [False, False]
    assert all(ack.refusal == "PERMISSION_DENIED" for ack in resp.acks)
    node = _node(coord, liar.id)
    assert node["quarantined"] and "batch attestation" in node["quarantine_reason"]
    with coord.client() as c:
        assert [c.get(f"/api/tasks/{t}").json()["state"] for t in ids] == ["queued", "queued"]


async def test_honest_signed_batch_is_accepted(coord: CoordinatorProcess, liar: Liar) -> None:
    ids = [_submit(coord, {"kind": "noop"}) for _ in range(3)]
    got = await liar.stub.FetchTask(
        pb.FetchTaskRequest(node_id=liar.id, max_tasks=3, wait_ms=5000), timeout=10
    )
    results = [TaskResult(exit_code=0) for _ in got.assignments]
    records = [
        attest_result(assignment_from_pb(a), r, "none", "")
        for a, r in zip(got.assignments, results, strict=True)
    ]
    batch = pb.ResultBatch(
        node_id=liar.id,
        results=[
            result_to_pb(liar.id, a.assignment_id, a.task_id, r)
            for a, r in zip(got.assignments, results, strict=True)
        ],
        batch_signature=sign_batch(liar.identity, records),
    )
    resp = await liar.stub.SubmitResults(batch, timeout=10)
    assert all(ack.accepted for ack in resp.acks)
    with coord.client() as c:
        tasks = [c.get(f"/api/tasks/{t}").json() for t in ids]
    assert all(t["state"] == "verified" and t["attempts"][0]["attested"] for t in tasks)
