"""Seed 002's pool API: its documented curl commands, run unchanged with the real curl binary."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

# the sandrun-compatible routes map onto the task API, whose store path runs on both elsewhere
pytestmark = pytest.mark.backend_neutral

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")

# Copied from seed 002 as written; only the host:port and the job id (both the seed's placeholders)
# are substituted before they run.
SEED_HOST = "http://pool.example.com:9000"
SEED_JOB = "pool-a1b2c3d4e5f6"
SEED_SUBMIT = """curl -X POST http://pool.example.com:9000/submit \\
  -F "files=@project.tar.gz" \\
  -F 'manifest={"entrypoint":"main.py","interpreter":"python3"}'"""
SEED_STATUS = "curl http://pool.example.com:9000/status/pool-a1b2c3d4e5f6"
SEED_OUTPUT = """curl http://pool.example.com:9000/outputs/pool-a1b2c3d4e5f6/results/output.png \\
  -o output.png"""
SEED_POOL = "curl http://pool.example.com:9000/pool"

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64 + b"\x00\xff" * 100
MAIN_PY = (
    "import os\n"
    "os.makedirs('results', exist_ok=True)\n"
    f"open('results/output.png', 'wb').write({PNG!r})\n"
    "print('wrote output.png')\n"
)


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60)


def _seed(command: str, url: str, job_id: str = SEED_JOB) -> str:
    return command.replace(SEED_HOST, url).replace(SEED_JOB, job_id)


def _curl_json(command: str, cwd: Path) -> tuple[int, Any]:
    """Run a curl command with ``-w`` appended to learn the status; returns (status, JSON body)."""
    out = _sh(command + " -s -w '\\n%{http_code}'", cwd)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body) if body else None


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CoordinatorProcess, str, Path]]:
    """A coordinator serving the pool API without keys (seed 002's clients send none) and one node."""
    root = tmp_path_factory.mktemp("pool-api")
    coord = CoordinatorProcess(root / "coordinator", env={"PHAGE_POOL_API_OPEN": "1"}).start()
    node = NodeProcess(coord, root / "node", name="worker-1").start()
    try:
        (online,) = wait_online(coord, 1)
        work = root / "client"
        work.mkdir()
        (work / "project.tar.gz").write_bytes(_tarball({"main.py": MAIN_PY.encode()}))
        yield coord, online["id"], work
    finally:
        node.stop()
        coord.stop()


def test_seed_002_curl_commands_submit_poll_download_and_pool(
    pool: tuple[CoordinatorProcess, str, Path],
) -> None:
    coord, node_id, work = pool
    submitted = _sh(_seed(SEED_SUBMIT, coord.url), work)
    assert submitted.returncode == 0, submitted.stderr
    reply = json.loads(submitted.stdout)
    assert reply["status"] == "queued" and reply["job_id"]
    job_id = reply["job_id"]

    def status() -> dict[str, Any]:
        out = _sh(_seed(SEED_STATUS, coord.url, job_id), work)
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def finished() -> dict[str, Any]:
        now = status()
        return now if now["pool_status"] in ("completed", "failed") else {}

    final = wait_until(finished, 60, what="the job to finish (seed 002's status)")
    assert final["pool_status"] == "completed", final
    assert final["job_id"] == job_id and final["worker_id"] == node_id
    assert final["worker_status"]["status"] == "completed" and final["worker_status"]["exit_code"] == 0
    assert isinstance(final["submitted_at"], float) and final["completed_at"] >= final["submitted_at"]
    assert "results/output.png" in final["outputs"]

    downloaded = _sh(_seed(SEED_OUTPUT, coord.url, job_id), work)
    assert downloaded.returncode == 0, downloaded.stderr
    assert (work / "output.png").read_bytes() == PNG

    summary = json.loads(_sh(_seed(SEED_POOL, coord.url), work).stdout)
    assert summary["total_workers"] == 1 and summary["healthy_workers"] == 1
    assert summary["total_jobs"] >= 1 and summary["queued_jobs"] == 0
    (worker,) = summary["workers"]
    assert worker["worker_id"] == node_id and worker["is_healthy"] is True
    assert {"endpoint", "active_jobs", "max_concurrent_jobs", "last_health_check"} <= set(worker)

    # the same job is an ordinary phage task
    with coord.client() as c:
        assert c.get(f"/api/tasks/{job_id}").json()["state"] == "verified"


def test_bad_input_gets_a_4xx_naming_the_field(pool: tuple[CoordinatorProcess, str, Path]) -> None:
    coord, _, work = pool
    url = coord.url
    (work / "escape.tar.gz").write_bytes(_tarball({"../escape.py": b"print('out')\n"}))
    cases = [
        (f'curl -X POST {url}/submit -F "files=@project.tar.gz"', 400, "manifest"),
        (f'curl -X POST {url}/submit -F \'manifest={{"entrypoint":"main.py"}}\'', 400, "files"),
        (
            f'curl -X POST {url}/submit -F "files=@escape.tar.gz" '
            '-F \'manifest={"entrypoint":"main.py","interpreter":"python3"}\'',
            400,
            "files",
        ),
        (
            f'curl -X POST {url}/submit -F "files=@project.tar.gz" '
            '-F \'manifest={"entrypoint":"../main.py","interpreter":"python3"}\'',
            400,
            "manifest.entrypoint",
        ),
        (f"curl -X POST {url}/submit -F \"files=@project.tar.gz\" -F 'manifest={{not json'", 400, "manifest"),
        (f"curl -X POST {url}/submit -H 'Content-Type: application/json' -d '{{}}'", 400, "body"),
        (f"curl --path-as-is {url}/outputs/t-none/../../etc/passwd", 400, "path"),
        (f"curl {url}/status/t-does-not-exist", 404, "job_id"),
    ]
    for command, status, field in cases:
        code, body = _curl_json(command, work)
        assert (code, body.get("field")) == (status, field), (command, body)
        assert body["message"], body
    code, body = _curl_json(
        f'curl -X POST {url}/submit -F "files=@escape.tar.gz" -F \'manifest={{"entrypoint":"a"}}\'', work
    )
    assert "'../escape.py'" in body["message"] and "'..'" in body["message"]


def test_pool_api_needs_a_key_unless_the_coordinator_opts_in(tmp_path: Path) -> None:
    coord = CoordinatorProcess(tmp_path / "coordinator").start()
    try:
        code, body = _curl_json(_seed(SEED_POOL, coord.url), tmp_path)
        assert code == 401 and "--pool-api-open" in body["message"]
        code, body = _curl_json(
            f"curl -H 'Authorization: Bearer {coord.admin_key}' {coord.url}/pool", tmp_path
        )
        assert code == 200 and body["total_workers"] == 0
        code, body = _curl_json(f"curl -H 'Authorization: Bearer wrong' {coord.url}/pool", tmp_path)
        assert code == 401
    finally:
        coord.stop()
