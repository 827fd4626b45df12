"""Operations on a live pool: cancelling running work, removing a node, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final, wait_until
from tests.integration.conftest import job

# node sandboxes and start-up lines; the store is not what is tested
pytestmark = pytest.mark.backend_neutral


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); count it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_cancel_reaches_the_node_and_kills_the_job(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]], tmp_path: Path
) -> None:
    coord, _ = pool(nodes=1, concurrency=1)
    wait_online(coord, 1)
    pid_file = tmp_path / "job.pid"
    long_job = {
        "kind": "job",
        "files": {"run.sh": f"echo $$ > {pid_file}\nexec sleep 60\n"},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "timeout_s": 120},
    }
    with coord.client() as c:
        task = c.post("/api/tasks", json=long_job).json()
        pid = wait_until(lambda: pid_file.exists() and int(pid_file.read_text() or 0), 20, what="job started")
        assert _alive(pid)
        resp = c.delete(f"/api/tasks/{task['id']}")
        assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
        wait_until(lambda: not _alive(pid), 10, what="cancelled job's process to die")
        final = c.get(f"/api/tasks/{task['id']}").json()
        assert final["state"] == "cancelled"
        assert [a["state"] for a in final["attempts"]] == ["cancelled"]
        # cancelling again is harmless; the node's slot is free again for new work
        assert c.delete(f"/api/tasks/{task['id']}").status_code == 200
        nxt = c.post("/api/tasks", json=job("after-cancel")).json()
        (done,) = wait_tasks_final(coord, [nxt["id"]], timeout=30)
        assert done["state"] == "verified"
        assert c.delete(f"/api/tasks/{nxt['id']}").status_code == 409


def test_removed_node_is_shut_out(pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]) -> None:
    coord, nodes = pool(nodes=1)
    wait_online(coord, 1)
    node_id = nodes[0].node_id
    with coord.client() as c:
        assert c.delete(f"/api/nodes/{node_id}").status_code == 200
        task = c.post("/api/tasks", json=job("nobody")).json()
        # the node keeps trying but is refused: nothing runs its work, it is not online
        wait_until(
            lambda: all(n["id"] != node_id for n in c.get("/api/nodes").json()["nodes"]),
            5,
            what="removed node gone from the list",
        )
        assert c.get(f"/api/tasks/{task['id']}").json()["state"] == "queued"


def test_cli_submit_directory_status_and_download(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]], tmp_path: Path
) -> None:
    coord, _ = pool(nodes=1)
    wait_online(coord, 1)
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "lib" / "words.txt").write_text("alpha beta gamma\n")
    (project / "main.py").write_text(
        "import pathlib\nn = len(pathlib.Path('lib/words.txt').read_text().split())\n"
        "pathlib.Path('results').mkdir()\n"
        "pathlib.Path('results/count.txt').write_text(str(n))\nprint('counted', n)\n"
    )
    env = {**os.environ, "PHAGE_URL": coord.url, "PHAGE_API_KEY": coord.admin_key}
    cli = [sys.executable, "-m", "phage.client.cli"]
    out = subprocess.run(
        [*cli, "submit", str(project), "-e", "main.py", "-o", "results/*", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.split()[0]
    assert task_id.startswith("t-") and "verified" in out.stdout
    status = subprocess.run([*cli, "status", task_id], env=env, capture_output=True, text=True, timeout=60)
    assert "counted 3" in status.stdout and "results/count.txt" in status.stdout
    dl = subprocess.run(
        [*cli, "download", task_id, "results/count.txt", "-O", str(tmp_path / "count.txt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dl.returncode == 0, dl.stderr
    assert (tmp_path / "count.txt").read_text() == "3"
    bad = subprocess.run(
        [*cli, "status", "t-does-not-exist"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "404" in bad.stderr
    wide = {**env, "COLUMNS": "220"}
    listing = subprocess.run([*cli, "nodes"], env=wide, capture_output=True, text=True, timeout=60)
    assert "node-0" in listing.stdout and "online" in listing.stdout
    node_id = wait_online(coord, 1)[0]["id"]
    q = subprocess.run(
        [*cli, "nodes", "quarantine", node_id, "--reason", "checking disks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert q.returncode == 0 and "checking disks" in q.stdout
    r = subprocess.run(
        [*cli, "nodes", "release", node_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "quarantined" not in r.stdout


def test_node_picks_real_sandboxes_and_honours_required_isolation(tmp_path: Path) -> None:
    """A node started without --sandbox offers every isolating backend; tasks run where they ask to."""
    import subprocess as sp

    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=0.5).start()
    info = coord.info
    proc = sp.Popen(
        [
            sys.executable,
            "-m",
            "phage.client.cli",
            "node",
            "--coordinator",
            coord.grpc_address,
            "--enroll",
            coord.enroll_address,
            "--ca-fingerprint",
            info["ca_fingerprint"],
            "--key-dir",
            str(tmp_path / "node"),
            "--heartbeat",
            "0.5",
        ],
        stdout=sp.DEVNULL,
        stderr=sp.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PHAGE_JOIN_TOKEN": info["join_token"]},
    )
    try:
        (node,) = wait_online(coord, 1)
        assert "none" not in node["sandboxes"] and node["sandboxes"], node["sandboxes"]
        with coord.client() as c:
            ids = []
            for isolation in ["any", *node["sandboxes"]]:
                task = job(f"in-{isolation}")
                task["isolation"] = isolation
                task["manifest"]["args"] = [f"in-{isolation}"]  # type: ignore[index]
                ids.append(c.post("/api/tasks", json=task).json()["id"])
            unisolated = c.post("/api/tasks", json={**job("x"), "isolation": "none"}).json()["id"]
            final = wait_tasks_final(coord, ids, timeout=60)
            assert [t["state"] for t in final] == ["verified"] * len(ids)
            assert [t["result"]["sandbox"] for t in final[1:]] == node["sandboxes"]
            assert final[0]["result"]["sandbox"] == node["sandboxes"][0], (
                "any = the node's default, listed first"
            )
            assert c.get(f"/api/tasks/{unisolated}").json()["state"] == "queued", "never run unisolated"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        coord.stop()
