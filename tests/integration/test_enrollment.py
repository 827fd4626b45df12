"""Joining the pool over mTLS, and every way of getting in without the right to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from phage.domain import TaskResult
from phage.errors import PermissionDenied, Unauthenticated
from phage.node.attest import sign_result
from phage.node.connection import Credentials, enroll, open_channel
from phage.pki import CertificateAuthority, NodeIdentity
from phage.pki.ca import make_csr
from phage.pki.enroll import fetch_pinned_ca
from phage.protocol.convert import assignment_from_pb, result_to_pb
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.testing import CoordinatorProcess


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    c = CoordinatorProcess(tmp_path_factory.mktemp("enroll") / "coordinator", heartbeat_s=5.0).start()
    yield c
    c.stop()


async def _join(
    coord: CoordinatorProcess, identity: NodeIdentity | None = None
) -> tuple[NodeIdentity, Credentials]:
    identity = identity or NodeIdentity.generate()
    info = coord.info
    creds = await enroll(
        identity,
        enroll_address=coord.enroll_address,
        join_token=info["join_token"],
        ca_fingerprint=info["ca_fingerprint"],
        info={"name": "t", "sandboxes": ["none"]},
    )
    return identity, creds


async def test_join_with_right_token_then_heartbeat_over_mtls(coord: CoordinatorProcess) -> None:
    identity, creds = await _join(coord)
    assert b"BEGIN CERTIFICATE" in creds.cert_pem
    async with open_channel(coord.grpc_address, identity, creds) as ch:
        resp = await pb_grpc.PhageCoordinatorStub(ch).Heartbeat(
            pb.HeartbeatRequest(node_id=identity.node_id), timeout=10
        )
    assert resp.node_state == "online"
    with coord.client() as c:
        ids = [n["id"] for n in c.get("/api/nodes").json()["nodes"]]
    assert identity.node_id in ids


async def test_wrong_token_is_refused(coord: CoordinatorProcess) -> None:
    info = coord.info
    with pytest.raises(Unauthenticated, match="join token"):
        await enroll(
            NodeIdentity.generate(),
            enroll_address=coord.enroll_address,
            join_token="not-the-token",
            ca_fingerprint=info["ca_fingerprint"],
            info={},
        )


def test_wrong_pinned_fingerprint_is_refused(coord: CoordinatorProcess) -> None:
    with pytest.raises(PermissionDenied, match="fingerprint mismatch"):
        fetch_pinned_ca(coord.enroll_address, "sha256:" + "0" * 64)


async def test_forged_identity_signature_is_refused(coord: CoordinatorProcess) -> None:
    identity = NodeIdentity.generate()
    other = NodeIdentity.generate()
    info = coord.info
    ca_pem = fetch_pinned_ca(coord.enroll_address, info["ca_fingerprint"])
    csr = make_csr(identity.tls_key, identity.node_id)
    ts = int(time.time() * 1000)
    request = pb.RegisterRequest(
        join_token=info["join_token"],
        identity_public_key=identity.public_key_raw,
        csr_pem=csr,
        timestamp_unix_ms=ts,
        identity_signature=other.sign(b"whatever"),
    )
    async with grpc.aio.secure_channel(
        coord.enroll_address,
        grpc.ssl_channel_credentials(ca_pem),
        options=[("grpc.ssl_target_name_override", "phage-ca")],
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.PhageCoordinatorStub(ch).Register(request, timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in (err.value.details() or "")


async def test_client_without_certificate_is_refused(coord: CoordinatorProcess) -> None:
    ca_pem = fetch_pinned_ca(coord.enroll_address, coord.info["ca_fingerprint"])
    async with grpc.aio.secure_channel(coord.grpc_address, grpc.ssl_channel_credentials(ca_pem)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.PhageCoordinatorStub(ch).Heartbeat(pb.HeartbeatRequest(node_id="x"), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails


async def test_node_rpcs_on_the_enrollment_port_need_a_certificate(coord: CoordinatorProcess) -> None:
    ca_pem = fetch_pinned_ca(coord.enroll_address, coord.info["ca_fingerprint"])
    async with grpc.aio.secure_channel(
        coord.enroll_address,
        grpc.ssl_channel_credentials(ca_pem),
        options=[("grpc.ssl_target_name_override", "phage-ca")],
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.PhageCoordinatorStub(ch).FetchTask(pb.FetchTaskRequest(node_id="x"), timeout=5)
    # the enrollment port serves Register and nothing else (coordinator/enrollment.py)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_certificate_from_another_ca_is_refused(coord: CoordinatorProcess, tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue-ca")
    cert_pem, _ = rogue.sign_node_csr(make_csr(identity.tls_key, identity.node_id), identity.node_id)
    real_ca = fetch_pinned_ca(coord.enroll_address, coord.info["ca_fingerprint"])
    async with open_channel(coord.grpc_address, identity, Credentials(cert_pem, real_ca)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.PhageCoordinatorStub(ch).Heartbeat(
                pb.HeartbeatRequest(node_id=identity.node_id), timeout=5
            )
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_node_cannot_act_as_another_node(coord: CoordinatorProcess) -> None:
    a, creds_a = await _join(coord)
    b, _ = await _join(coord)
    async with open_channel(coord.grpc_address, a, creds_a) as ch:
        stub = pb_grpc.PhageCoordinatorStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Heartbeat(pb.HeartbeatRequest(node_id=b.node_id), timeout=5)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitResult(pb.TaskResult(node_id=b.node_id, assignment_id="a-x"), timeout=5)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_result_for_someone_elses_assignment_is_refused(coord: CoordinatorProcess) -> None:
    a, creds_a = await _join(coord)
    b, creds_b = await _join(coord)
    with coord.client() as c:
        task = c.post("/api/tasks", json={"kind": "noop", "priority": 1000}).json()
    async with (
        open_channel(coord.grpc_address, a, creds_a) as ch_a,
        open_channel(coord.grpc_address, b, creds_b) as ch_b,
    ):
        stub_a, stub_b = pb_grpc.PhageCoordinatorStub(ch_a), pb_grpc.PhageCoordinatorStub(ch_b)
        got = await stub_a.FetchTask(
            pb.FetchTaskRequest(node_id=a.node_id, max_tasks=1, wait_ms=5000), timeout=10
        )
        assert [x.task_id for x in got.assignments] == [task["id"]]
        assignment = got.assignments[0].assignment_id
        # b signs properly, but the assignment is a's: refused (and b is quarantined for it)
        forged = sign_result(b, assignment_from_pb(got.assignments[0]), TaskResult(exit_code=0), "none", "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_b.SubmitResult(result_to_pb(b.node_id, assignment, task["id"], forged), timeout=5)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_b.SubmitResult(
                pb.TaskResult(node_id=b.node_id, assignment_id="a-never-issued", exit_code=0), timeout=5
            )
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        # the rightful node's signed result is still accepted, exactly once
        signed = result_to_pb(
            a.node_id,
            assignment,
            task["id"],
            sign_result(a, assignment_from_pb(got.assignments[0]), TaskResult(exit_code=0), "none", ""),
        )
        ack = await stub_a.SubmitResult(signed, timeout=5)
        assert ack.accepted and not ack.duplicate
        again = await stub_a.SubmitResult(signed, timeout=5)
        assert again.duplicate
    with coord.client() as c:
        final = c.get(f"/api/tasks/{task['id']}").json()
    assert final["state"] == "verified"
    assert [x["node_id"] for x in final["attempts"]] == [a.node_id]
    with coord.client() as c:
        nodes = {n["id"]: n for n in c.get("/api/nodes").json()["nodes"]}
    assert (
        nodes[b.node_id]["quarantined"] and "belongs to another node" in nodes[b.node_id]["quarantine_reason"]
    )
    assert not nodes[a.node_id]["quarantined"]
