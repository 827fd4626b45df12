"""Admission modes on a live pool: allowlist, approval, open, and draining a node."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from phage.errors import PermissionDenied
from phage.node.connection import enroll, load_credentials, open_channel
from phage.pki import NodeIdentity
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_tasks_final, wait_until

# Approval state is the store's and that test runs on both backends; allowlists, open admission and
# draining are the same store calls seen from other angles, and run once.
NEUTRAL = pytest.mark.backend_neutral

P = TypeVar("P", CoordinatorProcess, NodeProcess)
CLI = [sys.executable, "-m", "phage.client.cli"]


@pytest.fixture
def procs() -> Iterator[Callable[[P], P]]:
    """Register a started process to be stopped after the test (nodes first)."""
    started: list[CoordinatorProcess | NodeProcess] = []

    def keep(proc: P) -> P:
        started.append(proc)
        return proc

    yield keep
    stop_all(started)


def _identity(key_dir: Path) -> str:
    """Make a node identity ahead of the node (to allowlist it); the node loads it."""
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    return NodeIdentity.load_or_create(key_dir).node_id


def _write_workers(path: Path, workers: list[dict[str, Any]]) -> None:
    """Replace the workers file in one rename, as an editor or deploy tool would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(workers, indent=2))
    tmp.replace(path)


def _node(coord: CoordinatorProcess, node_id: str) -> dict[str, Any]:
    with coord.client() as c:
        return next(n for n in c.get("/api/nodes").json()["nodes"] if n["id"] == node_id)


def _holds(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert ``check`` stays true for ``seconds`` (a negative can only be watched for a while)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what
        time.sleep(0.1)


def _gated_job(tmp_path: Path, name: str) -> tuple[dict[str, Any], Path, Path]:
    """A job that signals it started and then runs until the test creates its release file."""
    started, release = tmp_path / f"{name}.started", tmp_path / f"{name}.release"
    script = f"touch {started}\nwhile [ ! -e {release} ]; do sleep 0.05; done\necho {name} > out.txt\n"
    task = {
        "kind": "job",
        "files": {"run.sh": script},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "outputs": ["out.txt"], "timeout_s": 120},
    }
    return task, started, release


def _quick_job(text: str) -> dict[str, Any]:
    return {
        "kind": "job",
        "files": {"run.sh": f"echo {text} > out.txt\n"},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "outputs": ["out.txt"], "timeout_s": 60},
    }


def _cli(coord: CoordinatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PHAGE_URL": coord.url, "PHAGE_API_KEY": coord.admin_key, "COLUMNS": "220"}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


async def _heartbeat(coord: CoordinatorProcess, key_dir: Path) -> pb.HeartbeatResponse:
    """One Heartbeat with a node's saved certificate, as the node itself would send it."""
    identity = NodeIdentity.load_or_create(key_dir)
    creds = load_credentials(key_dir, coord.info["ca_fingerprint"])
    assert creds is not None
    async with open_channel(coord.grpc_address, identity, creds) as ch:
        resp: pb.HeartbeatResponse = await pb_grpc.PhageCoordinatorStub(ch).Heartbeat(  # type: ignore[no-untyped-call]
            pb.HeartbeatRequest(node_id=identity.node_id), timeout=10
        )
        return resp


@NEUTRAL
def test_allowlist_admits_listed_keys_caps_them_and_shuts_out_a_delisted_one_without_restart(
    tmp_path: Path, procs: Callable[[Any], Any]
) -> None:
    coord_dir = tmp_path / "coordinator"
    coord_dir.mkdir()
    a_dir, b_dir = tmp_path / "node-a", tmp_path / "node-b"
    a, b = _identity(a_dir), _identity(b_dir)
    workers = coord_dir / "workers.json"
    entry_a = {"worker_id": a, "endpoint": "http://192.168.1.101:8443", "max_concurrent_jobs": 1}
    entry_b = {"worker_id": b, "endpoint": "http://192.168.1.102:8443", "max_concurrent_jobs": 4}
    _write_workers(workers, [entry_a, entry_b])
    coord = procs(CoordinatorProcess(coord_dir, env={"PHAGE_ADMISSION": "allowlist"}).start())

    # a key that is not in the file is refused at Register, even with the join token
    with pytest.raises(PermissionDenied, match="not in this pool's workers file"):
        asyncio.run(
            enroll(
                NodeIdentity.generate(),
                enroll_address=coord.enroll_address,
                join_token=coord.info["join_token"],
                ca_fingerprint=coord.info["ca_fingerprint"],
                info={"name": "stranger", "sandboxes": ["none"]},
            )
        )

    procs(NodeProcess(coord, a_dir, name="a", concurrency=4).start())
    wait_online(coord, 1)
    node_a = _node(coord, a)
    assert node_a["trusted"] and node_a["admission"] == "admitted"
    assert node_a["max_concurrent_jobs"] == 1 and node_a["concurrency_cap"] == 1

    # the file's max_concurrent_jobs caps the node below its own --concurrency
    with coord.client() as c:
        gated = [_gated_job(tmp_path, f"cap{i}") for i in range(3)]
        ids = [c.post("/api/tasks", json=task).json()["id"] for task, _, _ in gated]
        for _, started, release in gated:
            wait_until(started.exists, 30, what="next capped job to start")
            _holds(lambda: _node(coord, a)["active_tasks"] <= 1, 0.5, "node a holds more than its cap")
            release.touch()
        assert [t["state"] for t in wait_tasks_final(coord, ids, timeout=60)] == ["verified"] * 3

    # a long job on a; then b joins and a's key leaves the file
    marker = tmp_path / "ran-once"
    long_job = {
        "kind": "job",
        "files": {
            "run.sh": f"if [ -e {marker} ]; then echo again > out.txt; else touch {marker}; sleep 60; fi\n"
        },
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "outputs": ["out.txt"], "timeout_s": 120},
    }
    with coord.client() as c:
        task_id = c.post("/api/tasks", json=long_job).json()["id"]
        wait_until(marker.exists, 30, what="long job to start on a")
        procs(NodeProcess(coord, b_dir, name="b", concurrency=4).start())
        wait_online(coord, 2)
        _write_workers(workers, [entry_b])
        wait_until(lambda: _node(coord, a)["state"] == "refused", 10, what="a refused after leaving the file")
        assert _node(coord, a)["admission"] == "refused"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            asyncio.run(_heartbeat(coord, a_dir))
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "refused" in (refused.value.details() or "")
        (final,) = wait_tasks_final(coord, [task_id], timeout=60)
        assert final["state"] == "verified"
        assert [(x["node_id"], x["state"]) for x in final["attempts"]] == [(a, "lost"), (b, "succeeded")]
        pool = c.get("/pool").json()
        assert {w["worker_id"] for w in pool["workers"]} == {b}

        # listed again: the node (which kept retrying) is back without anyone restarting anything
        _write_workers(workers, [entry_a, entry_b])
        wait_until(lambda: _node(coord, a)["state"] == "online", 30, what="a back online once re-listed")


def test_approval_pending_gets_no_work_until_approved_and_rejected_never_rejoins(
    tmp_path: Path, procs: Callable[[Any], Any]
) -> None:
    coord = procs(CoordinatorProcess(tmp_path / "coordinator", env={"PHAGE_ADMISSION": "approval"}).start())
    first, second = tmp_path / "node-1", tmp_path / "node-2"
    procs(NodeProcess(coord, first, name="first").start())
    one = _wait_identity(first)
    wait_until(lambda: _node(coord, one)["state"] == "pending", 30, what="first node pending")
    assert _node(coord, one)["admission"] == "pending"
    wait_until(
        lambda: asyncio.run(_heartbeat(coord, first)).node_state == "pending",
        10,
        what="a pending node's heartbeat to be answered 'pending'",
    )

    with coord.client() as c:
        task_id = c.post("/api/tasks", json=_quick_job("approved")).json()["id"]
        _holds(
            lambda: c.get(f"/api/tasks/{task_id}").json()["state"] == "queued",
            2.0,
            "a pending node took work",
        )
        out = _cli(coord, "nodes", "approve", one)
        assert out.returncode == 0, out.stderr
        assert "online" in out.stdout
        (done,) = wait_tasks_final(coord, [task_id], timeout=30)
        assert done["state"] == "verified" and done["attempts"][0]["node_id"] == one
        node = _node(coord, one)
        assert node["state"] == "online" and node["trusted"] is True

        procs(NodeProcess(coord, second, name="second").start())
        two = _wait_identity(second)
        wait_until(lambda: _node(coord, two)["state"] == "pending", 30, what="second node pending")
        # the admin may admit a node untrusted (its results are then checked, not taken on faith)
        out = _cli(coord, "nodes", "approve", two, "--untrusted")
        assert out.returncode == 0 and "untrusted" in out.stdout, out.stderr
        node = _node(coord, two)
        assert node["state"] == "online" and node["trusted"] is False
        assert "untrusted" in _cli(coord, "nodes").stdout
        resp = c.post(f"/api/nodes/{two}/reject")
        assert resp.status_code == 200 and resp.json()["state"] == "rejected"
        # a rejected identity cannot come back, token or not
        with pytest.raises(PermissionDenied, match="rejected"):
            asyncio.run(
                enroll(
                    NodeIdentity.load_or_create(second),
                    enroll_address=coord.enroll_address,
                    join_token=coord.info["join_token"],
                    ca_fingerprint=coord.info["ca_fingerprint"],
                    info={"name": "second", "sandboxes": ["none"]},
                )
            )
        assert c.post(f"/api/nodes/{two}/approve").status_code == 409
        more = [c.post("/api/tasks", json=_quick_job(f"m{i}")).json()["id"] for i in range(4)]
        final = wait_tasks_final(coord, more, timeout=60)
        assert {a["node_id"] for t in final for a in t["attempts"]} == {one}
        assert "rejected" in _cli(coord, "nodes").stdout


def _wait_identity(key_dir: Path) -> str:
    wait_until(lambda: (key_dir / "identity.pem").exists(), 30, what="node identity")
    time.sleep(0.05)  # written in one call; let the writer close it
    return NodeIdentity.load_or_create(key_dir).node_id


@NEUTRAL
def test_open_pool_admits_a_node_without_a_token_as_untrusted(
    tmp_path: Path, procs: Callable[[Any], Any]
) -> None:
    coord = procs(CoordinatorProcess(tmp_path / "coordinator", env={"PHAGE_ADMISSION": "open"}).start())
    key_dir = tmp_path / "node"
    argv = [
        *CLI,
        "node",
        "--coordinator",
        coord.grpc_address,
        "--enroll",
        coord.enroll_address,
        "--ca-fingerprint",
        coord.info["ca_fingerprint"],
        "--key-dir",
        str(key_dir),
        "--name",
        "anyone",
        "--sandbox",
        "none",
        "--heartbeat",
        "0.5",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PHAGE_JOIN_TOKEN"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        (node,) = wait_online(coord, 1)
        assert node["name"] == "anyone" and node["trusted"] is False and node["admission"] == "admitted"
        with coord.client() as c:
            task_id = c.post("/api/tasks", json=_quick_job("open")).json()["id"]
            # it gets work; whether its result stands alone is the validation path's call (untrusted)
            wait_until(
                lambda: any(
                    a["node_id"] == node["id"] and a["state"] == "succeeded"
                    for a in c.get(f"/api/tasks/{task_id}").json()["attempts"]
                ),
                30,
                what="the open node to run a job",
            )
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


@NEUTRAL
def test_drained_node_finishes_its_job_and_takes_no_more(tmp_path: Path, procs: Callable[[Any], Any]) -> None:
    coord = procs(CoordinatorProcess(tmp_path / "coordinator").start())
    key_dir = tmp_path / "node"
    procs(NodeProcess(coord, key_dir, name="worker", concurrency=2).start())
    (node,) = wait_online(coord, 1)
    task, started, release = _gated_job(tmp_path, "held")
    with coord.client() as c:
        held = c.post("/api/tasks", json=task).json()["id"]
        wait_until(started.exists, 30, what="held job to start")
        out = _cli(coord, "nodes", "drain", node["id"])
        assert out.returncode == 0 and "draining" in out.stdout, out.stderr
        assert _node(coord, node["id"])["draining"] is True
        later = c.post("/api/tasks", json=_quick_job("later")).json()["id"]
        _holds(
            lambda: c.get(f"/api/tasks/{later}").json()["state"] == "queued", 1.5, "a draining node took work"
        )
        release.touch()
        (done,) = wait_tasks_final(coord, [held], timeout=30)
        assert done["state"] == "verified", "a draining node finishes what it holds"
        _holds(
            lambda: c.get(f"/api/tasks/{later}").json()["state"] == "queued", 1.0, "drained node took work"
        )
        assert "draining" in _cli(coord, "nodes").stdout
        assert _cli(coord, "nodes", "drain", node["id"], "--undo").returncode == 0
        (after,) = wait_tasks_final(coord, [later], timeout=30)
        assert after["state"] == "verified" and _node(coord, node["id"])["draining"] is False
        # an admin cap through POST /api/nodes/{id} is honoured and shown
        resp = c.post(f"/api/nodes/{node['id']}", json={"max_concurrent_jobs": 1})
        assert resp.status_code == 200 and resp.json()["max_concurrent_jobs"] == 1
        bad = c.post(f"/api/nodes/{node['id']}", json={"max_concurrent_jobs": 0})
        assert bad.status_code == 400 and bad.json()["field"] == "max_concurrent_jobs"
