"""What API keys may do to the pool: user keys' caps and quotas, blob quotas and collection,
retention of finished tasks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from phage.node.connection import Credentials, enroll, open_channel
from phage.pki import NodeIdentity
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.testing import CoordinatorProcess, wait_tasks_final
from tests.integration.conftest import job


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    env = {"PHAGE_USER_MAX_OPEN_TASKS": "6"}
    c = CoordinatorProcess(tmp_path_factory.mktemp("api") / "coordinator", heartbeat_s=5.0, env=env).start()
    yield c
    c.stop()


def _user(coord: CoordinatorProcess, name: str) -> httpx.Client:
    with coord.client() as c:
        key = c.post("/api/keys", json={"name": name, "role": "user"}).json()["key"]
    return coord.client(key)


def test_user_keys_cannot_jump_the_queue_or_retry_without_end(coord: CoordinatorProcess) -> None:
    with _user(coord, "erin") as erin:
        over = erin.post("/api/tasks", json=job("x", priority=11))
        assert over.status_code == 403 and over.json()["field"] == "priority"
        assert "10" in over.json()["message"]
        over = erin.post("/api/tasks", json=job("x", max_attempts=6))
        assert over.status_code == 403 and over.json()["field"] == "max_attempts"
        assert "5" in over.json()["message"]
        batch = erin.post("/api/tasks", json={"tasks": [job("a"), job("b", priority=500)]})
        assert batch.status_code == 403 and batch.json()["field"] == "tasks[1].priority"
        many = erin.post("/api/tasks", json={**job("x"), "count": 1001})
        assert many.status_code == 400 and many.json()["field"] == "count"
        assert "1000" in many.json()["message"]
        ok = erin.post("/api/tasks", json=job("x", priority=10, max_attempts=5))
        assert ok.status_code == 201
        erin.delete(f"/api/tasks/{ok.json()['id']}")
    with coord.client() as admin:  # admins keep every knob
        assert admin.post("/api/tasks", json=job("x", priority=1000, max_attempts=100)).status_code == 201


def test_user_key_open_task_quota(coord: CoordinatorProcess) -> None:
    with _user(coord, "frank") as frank:
        first = frank.post("/api/tasks", json={**job("x"), "count": 4})
        assert first.status_code == 201
        over = frank.post("/api/tasks", json={**job("x"), "count": 3})
        assert over.status_code == 429 and over.json()["field"] == "tasks"
        assert "6" in over.json()["message"] and over.headers["retry-after"]
        frank.delete(f"/api/tasks/{first.json()['tasks'][0]['id']}")  # finished tasks free the quota
        assert frank.post("/api/tasks", json={**job("x"), "count": 3}).status_code == 201
    with _user(coord, "grace") as grace:  # the quota is per key
        assert grace.post("/api/tasks", json={**job("x"), "count": 6}).status_code == 201


async def _upload(coord: CoordinatorProcess, identity: NodeIdentity, creds: Credentials, data: bytes) -> str:
    """UploadBlob as this node: 'ok' or the refusal's status code name."""

    async def chunks() -> AsyncIterator[pb.BlobChunk]:
        for i in range(0, len(data), 256 * 1024):
            yield pb.BlobChunk(data=data[i : i + 256 * 1024], total_size=len(data) if i == 0 else 0)

    async with open_channel(coord.grpc_address, identity, creds) as ch:
        try:
            await pb_grpc.PhageCoordinatorStub(ch).UploadBlob(chunks(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return "ok"


async def test_uploads_need_a_working_node_and_stay_within_its_budget(tmp_path: Path) -> None:
    """A pending or quarantined node may not upload; an admitted one only its hourly budget."""
    env = {"PHAGE_ADMISSION": "approval", "PHAGE_NODE_UPLOAD_BYTES_PER_HOUR": str(1024 * 1024)}
    c = CoordinatorProcess(tmp_path / "c", heartbeat_s=5.0, env=env).start()
    try:
        identity = NodeIdentity.generate()
        creds = await enroll(
            identity,
            enroll_address=c.enroll_address,
            join_token=c.info["join_token"],
            ca_fingerprint=c.info["ca_fingerprint"],
            info={"name": "uploader"},
        )
        assert await _upload(c, identity, creds, b"p" * 1000) == "PERMISSION_DENIED"  # pending
        async with httpx.AsyncClient(
            base_url=c.url, headers={"Authorization": f"Bearer {c.admin_key}"}
        ) as admin:
            assert (await admin.post(f"/api/nodes/{identity.node_id}/approve")).status_code == 200
            # one-chunk uploads, so each is sent whole before the answer (no race with the refusal)
            for i in range(5):
                assert await _upload(c, identity, creds, bytes([i]) * 200_000) == "ok"
            assert await _upload(c, identity, creds, b"b" * 200_000) == "RESOURCE_EXHAUSTED"
            before = sum(1 for p in (c.data_dir / "blobs").rglob("*") if p.is_file())
            q = await admin.post(f"/api/nodes/{identity.node_id}/quarantine")
            assert q.status_code == 200
            assert await _upload(c, identity, creds, b"q" * 1000) == "PERMISSION_DENIED"
        after = sum(1 for p in (c.data_dir / "blobs").rglob("*") if p.is_file())
        assert after == before  # refused uploads leave nothing behind
    finally:
        c.stop()


def _age_blobs(coord: CoordinatorProcess, seconds: float) -> list[Path]:
    """Make every stored blob look ``seconds`` old (as if the sweep ran that much later)."""
    files = [p for p in (coord.data_dir / "blobs").rglob("*") if p.is_file() and len(p.name) == 64]
    when = time.time() - seconds
    for p in files:
        os.utime(p, (when, when))
    return files


def test_gc_deletes_only_what_nothing_refers_to(pool: Any, tmp_path: Path) -> None:
    """Retention deletes old finished tasks; the sweep deletes unreferenced blobs and never a
    referenced one: the outputs of a kept task stay downloadable."""
    coord, _ = pool(nodes=1)
    with coord.client() as c:
        tid = c.post("/api/tasks", json=job("kept-output")).json()["id"]
        (done,) = wait_tasks_final(coord, [tid], timeout=60)
        assert done["state"] == "verified"
        orphan = hashlib.sha256(b"nobody refers to me").hexdigest()
        (coord.data_dir / "blobs" / orphan[:2]).mkdir(exist_ok=True)
        (coord.data_dir / "blobs" / orphan[:2] / orphan).write_bytes(b"nobody refers to me")
        referenced = {done["result"]["outputs"][0]["sha256"]}
        _age_blobs(coord, 2 * 3600)
        swept = c.post("/api/gc").json()  # default retention (30 days): the task stays
        assert swept["tasks_deleted"] == 0 and swept["blobs_deleted"] == 1
        names = {p.name for p in _age_blobs(coord, 2 * 3600)}
        assert orphan not in names and referenced <= names
        assert c.get(f"/api/tasks/{tid}/outputs/out/result.txt").text == "kept-output"
        # the CLI, with a retention short enough to take the finished task and then its blobs
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "phage.client.cli",
                "gc",
                "--older-than",
                "0.001s",
                "--url",
                coord.url,
                "--key",
                coord.admin_key,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "1 finished tasks deleted" in cli.stdout
        assert c.get(f"/api/tasks/{tid}").status_code == 404
        assert not _age_blobs(coord, 0)  # workspace and output went with it


def test_fresh_unreferenced_blobs_survive_a_sweep(coord: CoordinatorProcess) -> None:
    """A blob written moments ago (an upload whose result is on its way) is not collected."""
    fresh = hashlib.sha256(b"result on its way").hexdigest()
    (coord.data_dir / "blobs" / fresh[:2]).mkdir(exist_ok=True)
    (coord.data_dir / "blobs" / fresh[:2] / fresh).write_bytes(b"result on its way")
    with coord.client() as c:
        assert c.post("/api/gc").json()["blobs_deleted"] == 0
        assert c.post("/api/gc", params={"retention_s": -1}).status_code == 400
    assert (coord.data_dir / "blobs" / fresh[:2] / fresh).exists()
