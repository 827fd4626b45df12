"""``phage backup`` on a live pool, a wipe, ``phage restore``: tasks, keys, nodes and outputs come back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, phage_cli, wait_online, wait_tasks_final
from phage.testing_postgres import PostgresServer
from tests.integration.conftest import job

Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]


def _phage(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it: only the database URL comes from the environment (PostgreSQL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHAGE_") or k == "PHAGE_DATABASE_URL"}
    return phage_cli(*args, env=env)


def test_backup_live_wipe_restore(
    pool: Pool, tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord, (node,) = pool(nodes=1)
    wait_online(coord, 1)
    with coord.client() as c:
        ids = [c.post("/api/tasks", json=job(f"value-{i}")).json()["id"] for i in range(3)]
        wait_tasks_final(coord, ids)
        user = c.post("/api/keys", json={"name": "alice", "role": "user"}).json()
        # work still queued and running while the backup is taken: the snapshot must not care
        c.post("/api/tasks", json=job("late", sleep=1.0))
        before = {t["id"]: t for t in c.get("/api/tasks", params={"limit": 100}).json()["tasks"]}
        outputs = {tid: c.get(f"/api/tasks/{tid}/outputs/out/result.txt").content for tid in ids}
        node_id = c.get("/api/nodes").json()["nodes"][0]["id"]

    archive = tmp_path / "backups" / "pool.tar.gz"
    made = _phage("backup", str(archive), "--data-dir", str(coord.data_dir))
    assert made.returncode == 0, made.stderr
    assert oct(archive.stat().st_mode & 0o777) == "0o600"  # it holds the CA key
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    dump = "database/phage.db" if backend == "sqlite" else "database/phage.pgdump"
    assert {"manifest.json", dump, "pki/ca-key.pem", "admin-key", "join-token"} <= names
    assert manifest["database"] == backend and manifest["tasks"] >= len(before)
    assert _phage("restore", str(archive), "--check").returncode == 0

    # disaster: the coordinator, its whole data directory and (on PostgreSQL) its database are gone
    coord.stop()
    shutil.rmtree(coord.data_dir)
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        monkeypatch.setenv("PHAGE_DATABASE_URL", server.create_database())  # a new, empty one
    restored = _phage("restore", str(archive), "--data-dir", str(coord.data_dir))
    assert restored.returncode == 0, restored.stderr  # an empty (missing) directory needs no --force
    again = _phage("restore", str(archive), "--data-dir", str(coord.data_dir))
    assert again.returncode == 1 and "--force" in again.stderr  # never over a coordinator's state by accident
    if backend == "postgresql":  # nor over a database that holds a pool, even from a new data directory
        elsewhere = _phage("restore", str(archive), "--data-dir", str(tmp_path / "elsewhere"))
        assert elsewhere.returncode == 1 and "already holds a phage pool" in elsewhere.stderr, (
            elsewhere.stderr
        )

    coord.start()
    with coord.client() as c:
        after = {t["id"]: t for t in c.get("/api/tasks", params={"limit": 100}).json()["tasks"]}
        assert set(after) >= set(before)
        for tid in ids:
            assert after[tid]["state"] == "verified"
            assert after[tid]["result"] == before[tid]["result"]
            got = c.get(f"/api/tasks/{tid}/outputs/out/result.txt")
            assert got.content == outputs[tid]
            assert hashlib.sha256(got.content).hexdigest() == got.headers["x-content-sha256"]
        # the user's key still authenticates; the admin key is the one in the backup
        with coord.client(user["key"]) as as_user:
            assert as_user.get("/api/status").status_code == 200
    # the node's certificate was issued by the restored CA: it reconnects on its own, as itself
    (back,) = wait_online(coord, 1, timeout=60)
    assert back["id"] == node_id and node.proc is not None and node.proc.poll() is None
    with coord.client() as c:
        late = c.post("/api/tasks", json=job("after-restore")).json()["id"]
    (final,) = wait_tasks_final(coord, [late])
    assert final["state"] == "verified"


def test_a_tampered_backup_is_refused(pool: Pool, tmp_path: Path) -> None:
    coord, _ = pool(nodes=0)
    archive = tmp_path / "b.tar.gz"
    assert _phage("backup", str(archive), "--data-dir", str(coord.data_dir)).returncode == 0
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (unpacked / "admin-key").write_text("phk_someone-elses\n")
    forged = tmp_path / "forged.tar.gz"
    with tarfile.open(forged, "w:gz") as tar:
        for item in sorted(unpacked.rglob("*")):
            tar.add(item, arcname=item.relative_to(unpacked).as_posix(), recursive=False)
    checked = _phage("restore", str(forged), "--check")
    assert checked.returncode == 1 and "admin-key" in checked.stderr and "SHA-256" in checked.stderr
    target = tmp_path / "new-coordinator"
    assert _phage("restore", str(forged), "--data-dir", str(target)).returncode == 1
    assert not (target / "admin-key").exists()
