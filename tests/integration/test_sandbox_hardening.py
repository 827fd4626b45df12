"""Attacks on the node around its sandbox: disk caps, output collection, a node's death, leaks.

Each runs real jobs in real ``bwrap`` and ``gvisor`` sandboxes through the node's
:class:`JobExecutor`, on per-workspace volumes as a root node makes them.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from phage.domain import JobManifest, TaskResult
from phage.node.executor import CollectedOutput, JobExecutor
from phage.sandbox import cgroups as cg
from phage.sandbox.base import Sandbox, SandboxLimits
from phage.sandbox.scratch import ScratchVolumes, image_of, mounted_under
from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until
from tests.integration.conftest import job as job_spec
from tests.integration.test_sandbox import REAL, Node

# the fixtures, shared with the sandbox attack tests
from tests.integration.test_sandbox import node as node
from tests.integration.test_sandbox import sandbox as sandbox
from tests.integration.test_sandbox import sandbox_backend as sandbox_backend

pytestmark = pytest.mark.backend_neutral  # sandbox limits on a node; the store is not what is tested

GiB = 1024**3


@pytest.fixture(scope="module")
def volumes() -> ScratchVolumes:
    found = ScratchVolumes.detect()
    if isinstance(found, str):
        pytest.skip(f"scratch volumes need root and loop devices: {found}")
    return found


@pytest.fixture
def executor(node: Node, volumes: ScratchVolumes) -> Iterator[JobExecutor]:
    """The node's executor on volumes; its workspace removed even when a test fails."""
    made = JobExecutor(node.key_dir / "scratch", 16 * 1024, volumes)
    yield made
    made.cleanup("a-9")


def tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def job(
    sandbox: Sandbox, executor: JobExecutor, code: str, outputs: tuple[str, ...] = (), timeout_s: int = 30
) -> tuple[TaskResult, list[CollectedOutput]]:
    manifest = JobManifest(entrypoint="main.py", interpreter="python3", outputs=outputs, timeout_s=timeout_s)
    return await executor.run(sandbox, "a-9", manifest, tarball({"main.py": code}), 1 << 20)


# ---- Broken 3: preallocation past the scratch cap --------------------------------------


async def test_preallocating_disk_stays_within_the_scratch_cap(
    sandbox: Sandbox, node: Node, executor: JobExecutor
) -> None:
    # posix_fallocate reserves real disk at once (each file under RLIMIT_FSIZE), and
    # FALLOC_FL_KEEP_SIZE does not even grow the files: a polling guard sees it too late
    code = """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        got, size = 0, (1 << 30) - (1 << 20)  # each file just under the cap and RLIMIT_FSIZE
        for i in range(3):
            with open(f"pre{i}", "wb") as fh:
                try:
                    os.posix_fallocate(fh.fileno(), 0, size)
                    got += size
                except OSError as exc:
                    print("refused", exc.errno, flush=True)
            with open(f"keep{i}", "wb") as fh:
                if libc.fallocate(fh.fileno(), 1, 0, size) == 0:  # FALLOC_FL_KEEP_SIZE
                    got += size
            print("reserved", got, flush=True)
        """
    result, _ = await job(sandbox, executor, code)
    image = image_of(executor.workdir("a-9"))
    on_host = image.stat().st_blocks * 512
    reserved = [
        int(line.split()[1]) for line in result.stdout_tail.splitlines() if line.startswith("reserved")
    ]
    cap = GiB  # the default scratch cap of a job
    assert on_host <= cap, on_host
    assert reserved and max(reserved) <= cap, result
    assert result.exit_code != 0 or "refused" in result.stdout_tail, result
    executor.cleanup("a-9")
    assert not image.exists() and mounted_under(node.key_dir / "scratch") == []


# ---- crash leftovers ----------------------------------------------------------


def test_a_restarted_node_removes_its_crashed_runs_workspaces(
    tmp_path: Path, volumes: ScratchVolumes
) -> None:
    root = tmp_path / "scratch"
    executor = JobExecutor(root, 1024, volumes)
    workdir = executor._fresh("a-1", SandboxLimits(scratch_bytes=16 * 1024**2))
    (workdir / "big").write_bytes(b"x" * 4096)
    (root / "a-1.output").write_text("kept output")
    plain = root / "a-2"
    plain.mkdir()
    assert mounted_under(root) == [workdir]
    # the node is killed: nothing cleaned up; the next start finds and removes all of it
    JobExecutor(root, 1024, volumes)
    assert mounted_under(root) == []
    assert sorted(p.name for p in root.iterdir()) == [JobExecutor.MARK]
    # a directory the executor did not make is never emptied
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    JobExecutor(mine, 1024, volumes)
    assert (mine / "notes.txt").read_text() == "keep"


# ---- Broken 4 and odd names: output collection ---------------------------------------


async def test_a_symlink_maze_does_not_stall_output_collection(
    sandbox: Sandbox, node: Node, executor: JobExecutor
) -> None:
    # Path.glob follows links to directories: twenty links to "." make the pattern below
    # 20^6 paths (minutes of node CPU); links out of the workspace must not be followed either
    code = """
        import os
        os.makedirs("a/b/c")
        os.makedirs("m")
        open("a/b/c/real.txt", "w").write("real")
        for i in range(20):
            os.symlink(".", f"m/l{i}")
            os.symlink("..", f"a/b/up{i}")
        os.symlink("/etc", "etc-link")
        os.symlink("a/b/c/real.txt", "alias.txt")
        """
    started, cpu = time.monotonic(), time.process_time()
    result, outputs = await job(
        sandbox, executor, code, outputs=("m/*/*/*/*/*/*/*.txt", "**/*.txt", "*/passwd"), timeout_s=10
    )
    assert time.monotonic() - started < 10 + 5, result
    assert time.process_time() - cpu < 5
    assert [o.path for o in outputs] == ["a/b/c/real.txt"], result
    assert result.exit_code == 0, result


async def test_an_odd_output_name_costs_only_that_file(
    sandbox: Sandbox, node: Node, executor: JobExecutor
) -> None:
    code = """
        import os
        os.makedirs("out")
        open("out/good.txt", "w").write("good")
        open("out/back\\\\slash.txt", "w").write("bad")
        open(b"out/latin-\\xe9.txt", "w").write("bad")
        """
    result, outputs = await job(sandbox, executor, code, outputs=("out/*.txt",))
    assert [o.path for o in outputs] == ["out/good.txt"], result
    stderr = result.stderr_tail
    assert "back\\\\slash.txt" in stderr and "backslash" in stderr, stderr
    assert "latin-\\\\xe9.txt" in stderr and "not valid UTF-8" in stderr, stderr
    assert result.exit_code == 1 and not result.error, result


# ---- weak: what the sandbox sees ----------------------------------------------


async def test_mountinfo_names_no_host_path(sandbox: Sandbox, node: Node, executor: JobExecutor) -> None:
    result, _ = await job(sandbox, executor, "print(open('/proc/self/mountinfo').read())")
    text = result.stdout_tail
    assert result.exit_code == 0 and "/workspace" in text, result
    for leak in (str(node.key_dir), "/tmp/", "phage-sandbox", "a-9"):
        assert leak not in text, (leak, text)


async def test_multiprocessing_works(sandbox: Sandbox, executor: JobExecutor) -> None:
    code = """
        import multiprocessing
        with multiprocessing.Pool(2) as pool:
            print("squares", pool.starmap(pow, [(1, 2), (2, 2), (3, 2)]))
        """
    result, _ = await job(sandbox, executor, code)
    assert result.exit_code == 0 and "squares [1, 4, 9]" in result.stdout_tail, result


# ---- Broken 5: a sandbox outlives its node ---------------------------------------------


NODE = """
import asyncio, sys
from collections.abc import Callable, Iterator
from pathlib import Path
from phage.sandbox.registry import BACKENDS
from phage.sandbox.base import SandboxLimits, SandboxRequest
work = Path(sys.argv[2])
request = SandboxRequest(["/bin/sh", "-c", "sleep 300 & sleep 300"], work, limits=SandboxLimits(wall_s=30))
asyncio.run(BACKENDS[sys.argv[1]]().run(request))
"""


async def test_a_sandbox_dies_with_its_node(sandbox: Sandbox, node: Node) -> None:
    # a stand-in node runs a long task; kill -9 it: no process of the sandbox may live on
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", NODE, sandbox.name, str(node.workdir))
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while len(me.children(recursive=True)) < (5 if sandbox.name == "gvisor" else 3):
            assert time.monotonic() < deadline and proc.returncode is None, me.children(recursive=True)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the sleeps are running inside
        tree = me.children(recursive=True)
    finally:
        proc.kill()
        await proc.wait()
    deadline = time.monotonic() + 10  # the task's own deadline was 30 s away
    while alive := [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, alive
        await asyncio.sleep(0.05)


def test_a_restarted_node_kills_what_a_dead_node_left_in_its_cgroups() -> None:
    found = cg.Cgroups.detect()
    if isinstance(found, str) or "pids" not in found.groups:
        pytest.skip(f"needs a writable pids cgroup: {found}")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the node that made the group
    group = found.groups["pids"] / f"run-{dead.pid}-0-feed00"
    group.mkdir()
    leftover = subprocess.Popen(["sleep", "300"])
    try:
        (group / "cgroup.procs").write_text(str(leftover.pid))
        assert isinstance(cg.Cgroups.detect(), cg.Cgroups)  # what a starting node does
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not group.exists()
    finally:
        if leftover.poll() is None:
            os.kill(leftover.pid, signal.SIGKILL)
            leftover.wait()


@pytest.mark.parametrize("sandbox_name", sorted(REAL))
def test_a_killed_node_leaves_no_sandbox_and_its_restart_no_workspace(
    sandbox_name: str, pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]], tmp_path: Path
) -> None:
    if shutil.which(REAL[sandbox_name]) is None:
        pytest.skip(f"{REAL[sandbox_name]} is not installed")
    coord, _ = pool(nodes=0)
    node = NodeProcess(coord, tmp_path / "victim", name="victim", concurrency=1, sandbox=sandbox_name).start()
    try:
        wait_online(coord, 1, timeout=60)
        spec = job_spec("never", sleep=300, isolation=sandbox_name)
        with coord.client() as c:
            task = c.post("/api/tasks", json=spec).json()
            wait_until(
                lambda: c.get(f"/api/tasks/{task['id']}").json()["state"] == "running", 30, what="running"
            )
        assert node.proc is not None
        me = psutil.Process(node.proc.pid)
        # the job's sleep, as the host sees it: itself under bwrap, a ptrace stub ("exe") under gVisor
        inside = "exe" if sandbox_name == "gvisor" else "sleep"
        wait_until(lambda: inside in {p.name() for p in me.children(recursive=True)}, 30, what="the job")
        tree = me.children(recursive=True)
        work = node.key_dir / "work"
        old = mounted_under(work)
        assert old, "the job runs on its own volume"
        left = {p.name for p in work.iterdir()} - {JobExecutor.MARK}
        os.kill(node.proc.pid, signal.SIGKILL)  # the node process alone, as the OOM killer would
        node.proc.wait()

        def gone() -> bool:
            return not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        wait_until(gone, 10, what="every sandbox process dead")  # the job's own deadline is 60 s away
        node.start()  # the same node, restarted: its crashed run's workspace goes

        def cleaned() -> bool:
            return not set(old) & set(mounted_under(work)) and not left & {p.name for p in work.iterdir()}

        wait_until(cleaned, 30, what="the crashed run's volume and workspace removed")
    finally:
        node.stop()
