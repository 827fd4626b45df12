"""The SDK (blocking and async, typed answers) and the CLI for scripts (--json, exit codes) on a real pool."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import phage
from phage import AsyncClient, Client, Node, PoolStatus, Task
from phage.testing import CoordinatorProcess, NodeProcess, phage_cli, wait_online
from tests.integration.conftest import job

# the command-line client and SDK over HTTP; the store behind the API is tested on both elsewhere
pytestmark = pytest.mark.backend_neutral

Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]


def _cli(coord: CoordinatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PHAGE_URL": coord.url, "PHAGE_API_KEY": coord.admin_key}
    return phage_cli(*args, env=env)


def _failing_job() -> dict[str, Any]:
    return {
        "kind": "job",
        "files": {"run.sh": "echo about to fail >&2\nexit 3\n"},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "timeout_s": 30},
        "max_attempts": 1,
    }


def test_sync_client_typed_answers_and_streamed_download(pool: Pool, tmp_path: Path) -> None:
    coord, _ = pool(nodes=1)
    wait_online(coord, 1)
    with Client(coord.url, coord.admin_key) as c:
        made = c.submit(job("forty-two"))
        assert isinstance(made, Task) and made.id.startswith("t-")
        done = c.wait(made.id, timeout=60, poll_s=0.1)
        assert done.succeeded and done.final and done.result is not None
        assert [o.path for o in done.result.outputs] == ["out/result.txt"]
        assert done.attempts and done.attempts[0].state == "succeeded"

        seen: list[tuple[int, int | None]] = []
        dest = tmp_path / "got" / "result.txt"
        written = c.download(made.id, "out/result.txt", dest, progress=lambda d, t: seen.append((d, t)))
        assert written == dest and dest.read_text() == "forty-two"
        assert seen[-1] == (9, 9)  # progress reached the announced length
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == done.result.outputs[0].sha256
        assert not list(dest.parent.glob(".*.part"))

        page = c.list_tasks(limit=5)
        assert [t.id for t in page.tasks] == [made.id] and page.next_before is None
        status = c.status()
        assert isinstance(status, PoolStatus) and status.nodes.online == 1
        nodes = c.nodes()
        assert isinstance(nodes[0], Node) and nodes[0].state == "online"

        with pytest.raises(phage.PhageClientError) as err:
            c.download(made.id, "out/missing.txt", tmp_path / "missing.txt")
        assert err.value.status == 404 and not (tmp_path / "missing.txt").exists()
        with pytest.raises(phage.PhageError) as bad:
            c.submit({"kind": "job", "manifest": {"entrypoint": "../x"}})
        assert bad.value.field and "manifest" in bad.value.field


async def test_async_client_streams_an_archive_upload_with_progress(pool: Pool, tmp_path: Path) -> None:
    coord, _ = pool(nodes=1)
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.sh").write_text("mkdir -p out\nwc -c < blob.bin > out/size.txt\n")
    (project / "blob.bin").write_bytes(os.urandom(2 * 1024 * 1024))  # incompressible: a real upload
    archive = tmp_path / "ws.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(project.iterdir()):
            tar.add(item, arcname=item.name)
    seen: list[int] = []
    async with AsyncClient(coord.url, coord.admin_key) as c:
        manifest = {"entrypoint": "main.sh", "interpreter": "sh", "outputs": ["out/*"], "timeout_s": 60}
        refs = await c.submit_archive(archive, manifest, progress=lambda d, _t: seen.append(d))
        assert len(refs) == 1
        done = await c.wait(refs[0].id, poll_s=0.1)
        assert done.succeeded, done.error
        await c.download(refs[0].id, "out/size.txt", tmp_path / "size.txt")
    assert (tmp_path / "size.txt").read_text().strip() == str(2 * 1024 * 1024)
    assert seen and seen[-1] == archive.stat().st_size and len(seen) > 1  # read in chunks, not at once


def test_cli_wait_exit_status_and_json(pool: Pool, tmp_path: Path) -> None:
    coord, _ = pool(nodes=1)
    files = tmp_path / "fail"
    files.mkdir()
    (files / "run.sh").write_text("echo about to fail >&2\nexit 3\n")

    failed = _cli(coord, "submit", str(files), "-e", "run.sh", "--interpreter", "sh", "--wait", "--json")
    assert failed.returncode == 1, failed.stderr
    (task,) = json.loads(failed.stdout)
    assert task["state"] == "failed" and task["attempts"]

    (files / "run.sh").write_text("echo fine\n")
    ok = _cli(coord, "submit", str(files), "-e", "run.sh", "--interpreter", "sh", "--wait", "--count", "2")
    assert ok.returncode == 0, ok.stderr
    ids = [w for w in ok.stdout.split() if w.startswith("t-")][:2]
    assert len(set(ids)) == 2

    listing = json.loads(_cli(coord, "tasks", "--json").stdout)
    assert {t["id"] for t in listing["tasks"]} >= set(ids) and len(listing["tasks"]) == 3
    assert (
        json.loads(_cli(coord, "tasks", "--json", "--state", "failed").stdout)["tasks"][0]["id"] == task["id"]
    )
    shown = json.loads(_cli(coord, "status", ids[0], "--json").stdout)
    assert shown["state"] == "verified" and shown["result"]["stdout_tail"].strip() == "fine"
    pool_status = json.loads(_cli(coord, "status", "--json").stdout)
    assert pool_status["nodes"]["online"] == 1 and pool_status["tasks"]["verified"] == 2
    (node,) = json.loads(_cli(coord, "nodes", "--json").stdout)
    assert node["state"] == "online"
    made = json.loads(_cli(coord, "keys", "create", "ci", "--json").stdout)
    assert made["key"] and made["role"] == "user"
    keys = json.loads(_cli(coord, "keys", "list", "--json").stdout)
    assert "ci" in {k["name"] for k in keys} and all("key" not in k for k in keys)
    usage = json.loads(_cli(coord, "usage", "--json").stdout)
    assert {u["key_id"] for u in usage} >= {made["id"]}
    cancelled = _cli(coord, "cancel", ids[0], "--json")
    assert cancelled.returncode == 1 and "409" in cancelled.stderr  # a finished task cannot be cancelled

    missing = _cli(coord, "download", ids[0], "nothing.txt", "-O", str(tmp_path / "n.txt"))
    assert missing.returncode == 1 and "404" in missing.stderr and not (tmp_path / "n.txt").exists()


def test_every_listing_prints_json(pool: Pool, tmp_path: Path) -> None:
    """``--json`` on the listings and detail views scripts read: workloads, sharded models, networks."""
    np = pytest.importorskip("numpy")
    from phage.training.data import dataset_bytes

    coord, _ = pool(nodes=0)
    with coord.client() as c:
        assert c.post("/api/workloads", json={"digest": "sha256:" + "ab" * 32, "name": "nightly"}).is_success
    workloads = json.loads(_cli(coord, "workloads", "list", "--json").stdout)
    assert workloads["enforced"] is False and workloads["workloads"][0]["name"] == "nightly"
    table = _cli(coord, "workloads", "list")
    assert table.returncode == 0 and "nightly" in table.stdout and "any workload" in table.stdout

    declared = _cli(
        coord, "models", "declare", "shards", "--checkpoint", str(tmp_path / "elsewhere"),
        "--blocks", "4", "--bytes-per-block", "1KiB",
    )  # fmt: skip
    assert declared.returncode == 0, declared.stderr
    (model,) = json.loads(_cli(coord, "models", "--json").stdout)
    assert model["name"] == "shards" and model["num_blocks"] == 4
    coverage = json.loads(_cli(coord, "models", "coverage", "shards", "--json").stdout)
    assert coverage["per_block"] == [0, 0, 0, 0] and coverage["servers"] == []

    rng = np.random.default_rng(0)
    blob = dataset_bytes(rng.random((40, 64), dtype=np.float32), rng.integers(0, 10, 40))
    spec = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()
    with coord.client() as c:
        digest = c.post("/api/datasets", content=blob).json()["sha256"]
        made = c.post("/api/networks", json={"spec": spec, "dataset": digest})
        assert made.status_code == 201, made.text
    (listed,) = json.loads(_cli(coord, "networks", "--json").stdout)
    assert listed["id"] == made.json()["id"] and listed["name"] == "digits-mlp"
    one = json.loads(_cli(coord, "networks", listed["id"], "--json").stdout)
    assert [v["id"] for v in one["vnodes"]] == ["stem", "mid", "neck", "out"]
