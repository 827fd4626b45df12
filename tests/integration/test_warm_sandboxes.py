"""Warm bwrap sandboxes: reused only after a scrub that leaves nothing of the task before.

Real sandboxes (bwrap, cgroups, a scratch volume per sandbox on a root node) from
``phage.sandbox.warm``, driven as a node's executor drives them. Each test checks
that reuse really happened (the same sandbox, the same supervisor), so what the
second task sees is what a scrubbed sandbox shows, not a fresh one.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import shutil
import signal
import tarfile
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from phage.domain import JobManifest
from phage.node.executor import JobExecutor
from phage.sandbox.base import SandboxLimits, SandboxRequest
from phage.sandbox.bwrap import BwrapSandbox
from phage.sandbox.scratch import ScratchVolumes
from phage.sandbox.warm import WarmPool, WarmSandbox
from phage.sandbox.warm import unavailable_reason as warm_unavailable

pytestmark = pytest.mark.backend_neutral

LIMITS = SandboxLimits(wall_s=30, memory_bytes=128 * 1024**2, pids=64, scratch_bytes=16 * 1024**2)

LEAVE_TRACES = r"""
import ctypes, os, signal, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
open("left.txt", "w").write("clue")
os.makedirs("deep/er", exist_ok=True); open("deep/er/f", "w").write("clue"); os.chmod("deep", 0)
open("/tmp/left", "w").write("clue")
os.makedirs("/tmp/locked"); open("/tmp/locked/f", "w").write("clue"); os.chmod("/tmp/locked", 0)
open("/dev/shm/left", "w").write("clue")
shm = libc.shmget(0x5eed, 4096, 0o1600)
sem = libc.semget(0x5eee, 1, 0o1600)
msg = libc.msgget(0x5eef, 0o1600)
print("sysv", shm >= 0, sem >= 0, msg >= 0)
mq = libc.syscall(240, b"clue", os.O_CREAT | os.O_RDWR, 0o600, None)  # mq_open
print("mq_open", mq, ctypes.get_errno())
for how in ("environ", "mem", "fd"):
    try:
        os.listdir("/proc/1/fd") if how == "fd" else open(f"/proc/1/{how}", "rb").read(1)
        print("read", how)
    except OSError:
        pass
os.kill(1, signal.SIGKILL)  # init of its namespace: ignored
os.kill(1, signal.SIGSTOP)
subprocess.Popen(["sleep", "300"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    time.sleep(300)
    os._exit(0)
print("pid1", open("/proc/1/stat").read().split()[21])
"""

LOOK = r"""
import os, subprocess
def listing(top):
    out = []
    for root, dirs, files in os.walk(top):
        out += [os.path.join(root, n) for n in dirs + files]
    return sorted(out)
print("seen", {
    "workspace": sorted(os.listdir(".")),
    "tmp": listing("/tmp"),
    "shm": listing("/dev/shm"),
    "sysv": [open(f"/proc/sysvipc/{k}").read().splitlines()[1:] for k in ("shm", "sem", "msg")],
    "env": sorted(k for k in os.environ if k.startswith("CLUE")),
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "me": os.getpid(),
    "pid1": open("/proc/1/stat").read().split()[21],
    "mode": oct(os.stat(".").st_mode & 0o777),
})
"""


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WarmPool]:
    reason = warm_unavailable()
    if reason is not None:
        pytest.skip(f"warm sandboxes do not work here: {reason}")
    volumes = ScratchVolumes.detect()
    root = tmp_path / "scratch"
    root.mkdir(mode=0o700)
    made = WarmPool(root, volumes if isinstance(volumes, ScratchVolumes) else None, size=1)
    yield made
    await made.close()


async def _run(
    pool: WarmPool, code: str, *, env: dict[str, str] | None = None, wall_s: float = 30
) -> tuple[WarmSandbox, str, str]:
    limits = replace(LIMITS, wall_s=wall_s)
    request = SandboxRequest(["/usr/bin/python3", "-c", code], Path("/unused"), env=env or {}, limits=limits)
    lease = await pool.acquire(request)
    assert lease is not None
    outcome = await lease.run(SandboxRequest(request.argv, lease.workdir, request.env, request.limits))
    pool.release(lease, reuse=True)
    return (
        lease,
        outcome.stdout_tail,
        outcome.stderr_tail + f"[exit {outcome.exit_code} {outcome.killed_reason}]",
    )


async def _settled(pool: WarmPool) -> None:
    while pool._resetting:
        await asyncio.sleep(0.01)


async def test_a_reused_sandbox_shows_the_next_task_nothing_of_the_one_before(pool: WarmPool) -> None:
    first, out, err = await _run(pool, LEAVE_TRACES, env={"CLUE_SECRET": "x"})
    assert "sysv True True True" in out, (out, err)
    assert "mq_open -1 1" in out, "POSIX message queues are denied (EPERM)"
    assert "read " not in out, "the supervisor's memory, environment or descriptors were readable"
    assert err.endswith("[exit 0 ]"), err
    await _settled(pool)
    second, out2, _ = await _run(pool, LOOK)
    assert second is first and first.uses == 2, "the sandbox was not reused"
    seen = ast.literal_eval(next(x for x in out2.splitlines() if x.startswith("seen "))[5:])
    assert seen["pid1"] == out.split("pid1 ")[1].split()[0], "not the same supervisor"
    assert seen["workspace"] == [] and seen["tmp"] == [] and seen["shm"] == [], seen
    assert seen["sysv"] == [[], [], []], seen
    assert seen["env"] == [], seen
    assert seen["procs"] == [1, seen["me"]], seen
    assert seen["mode"] == "0o700", seen


async def test_a_task_that_crosses_a_limit_is_never_followed_in_its_sandbox(pool: WarmPool) -> None:
    me = psutil.Process()
    first, _, err = await _run(pool, "import time; time.sleep(60)", wall_s=1)
    assert "timeout" in err, err
    await _settled(pool)
    second, out, _ = await _run(pool, "print('fresh')")
    assert second is not first and second.uses == 1 and out.strip() == "fresh"
    assert not first.usable
    await _settled(pool)
    await pool.close()
    left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], left


async def test_a_withdrawn_task_closes_its_sandbox_and_leaves_nothing_running(pool: WarmPool) -> None:
    me = psutil.Process()
    request = SandboxRequest(["/bin/sh", "-c", "sleep 300 & sleep 300"], Path("/unused"), limits=LIMITS)
    lease = await pool.acquire(request)
    assert lease is not None
    task = asyncio.ensure_future(lease.run(SandboxRequest(request.argv, lease.workdir, limits=LIMITS)))
    deadline = time.monotonic() + 20
    while not any(p.name() == "sleep" for p in me.children(recursive=True)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    pool.release(lease, reuse=True)
    await _settled(pool)
    assert not lease.usable and not lease.workdir.exists()
    left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], left


async def test_a_missing_program_fails_as_in_a_cold_sandbox(pool: WarmPool, tmp_path: Path) -> None:
    cold_dir = tmp_path / "cold"
    cold_dir.mkdir()
    cold = await BwrapSandbox().run(SandboxRequest(["no-such-program"], cold_dir, limits=LIMITS))
    request = SandboxRequest(["no-such-program"], Path("/unused"), limits=LIMITS)
    lease = await pool.acquire(request)
    assert lease is not None
    warm = await lease.run(SandboxRequest(request.argv, lease.workdir, limits=LIMITS))
    pool.release(lease, reuse=True)
    assert warm.exit_code == cold.exit_code == 1
    assert "execvp no-such-program: No such file or directory" in warm.stderr_tail
    assert lease.usable, "a task that failed by itself leaves a reusable sandbox"


async def test_idle_sandboxes_are_closed_after_a_while(tmp_path: Path) -> None:
    if warm_unavailable() is not None:
        pytest.skip(str(warm_unavailable()))
    root = tmp_path / "scratch"
    root.mkdir(mode=0o700)
    pool = WarmPool(root, None, size=2, idle_s=0.4)
    try:
        await pool.prewarm(LIMITS, 2)
        assert len(pool._idle) == 2
        deadline = time.monotonic() + 10
        while pool._idle:
            assert time.monotonic() < deadline, "idle sandboxes were kept"
            await asyncio.sleep(0.1)
        assert [p.name for p in root.iterdir()] == []
    finally:
        await pool.close()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("size", [1024, 9 * 1024**2])
async def test_job_outputs_outlive_the_reuse_of_their_sandbox(tmp_path: Path, size: int) -> None:
    # small outputs are copied out and the sandbox reused; large ones keep the sandbox's workspace
    if warm_unavailable() is not None:
        pytest.skip(str(warm_unavailable()))
    root = tmp_path / "scratch"
    volumes = ScratchVolumes.detect()
    vols = volumes if isinstance(volumes, ScratchVolumes) else None
    pool = WarmPool(root, vols, size=1)
    executor = JobExecutor(root, 16 * 1024, vols, pool)
    main = textwrap.dedent(f"""
        import os
        os.makedirs("out", exist_ok=True)
        open("out/data.bin", "wb").write(b"x" * {size})
        """).encode()
    manifest = JobManifest(entrypoint="main.py", interpreter="python3", outputs=("out/*",), timeout_s=30)
    workspace = _tar({"main.py": main})
    try:
        result, outputs = await executor.run(BwrapSandbox(), "a-1", manifest, workspace, 1 << 30)
        assert result.exit_code == 0, result
        await _settled(pool)
        again, _ = await executor.run(BwrapSandbox(), "a-2", manifest, workspace, 1 << 30)
        assert again.exit_code == 0, again
        assert [o.path for o in outputs] == ["out/data.bin"]
        assert outputs[0].local.read_bytes() == b"x" * size, "the first task's output changed"
        assert outputs[0].local.is_relative_to(root / "a-1") == (size < 8 * 1024**2)
        executor.cleanup("a-1")
        assert not outputs[0].local.exists()
    finally:
        executor.cleanup("a-2")
        await pool.close()
    assert sorted(p.name for p in root.iterdir()) == [JobExecutor.MARK]


async def test_a_sandbox_killed_while_idle_is_never_handed_out(pool: WarmPool) -> None:
    await pool.prewarm(LIMITS, 1)
    (idle,) = pool._idle
    os.killpg(idle._proc.pid, signal.SIGKILL)  # as an operator or the OOM killer might
    await asyncio.wait_for(idle._proc.wait(), 10)
    lease, out, err = await _run(pool, "print('ran')")
    assert lease is not idle and out.strip() == "ran", err
    await _settled(pool)
    assert not idle.workdir.exists(), "the dead sandbox's workspace was left behind"


async def test_an_unprivileged_node_reuses_its_sandbox_and_scrubs_it(tmp_path: Path) -> None:
    # a node run as an ordinary user: no volumes, no cgroups, no uid switch; the same scrub applies
    if os.geteuid() != 0 or warm_unavailable() is not None:
        pytest.skip("needs root (to become an unprivileged user for the test) and working warm sandboxes")
    src = Path(__file__).resolve().parents[2] / "src"
    if not all(os.stat(p).st_mode & 0o005 == 0o005 for p in [src, *src.parents]):
        pytest.skip(f"{src} is not readable by other users")
    public = Path(tempfile.mkdtemp(prefix="phage-test-"))
    try:
        public.chmod(0o777)
        script = public / "node.py"
        script.write_text(
            textwrap.dedent(f"""
            import asyncio, os, sys
            sys.path.insert(0, {str(src)!r})
            from pathlib import Path
            from phage.sandbox.base import SandboxLimits, SandboxRequest
            from phage.sandbox.warm import WarmPool

            async def main():
                root = Path({str(public)!r}) / "scratch"
                root.mkdir(mode=0o700)
                pool = WarmPool(root, None, size=1)
                seen = []
                for code in ("open('/tmp/left', 'w'); open('left', 'w'); print(os.getuid())",
                             "print(os.listdir('/tmp'), os.listdir('.'), os.getuid())"):
                    argv = ["/usr/bin/python3", "-c", "import os; " + code]
                    request = SandboxRequest(argv, root, limits=SandboxLimits(wall_s=30))
                    lease = await pool.acquire(request)
                    out = await lease.run(SandboxRequest(argv, lease.workdir, limits=request.limits))
                    seen.append((id(lease), out.exit_code, out.stdout_tail.strip()))
                    pool.release(lease, reuse=True)
                    while pool._resetting:
                        await asyncio.sleep(0.01)
                await pool.close()
                print(os.getuid(), seen[0][0] == seen[1][0], [s[1:] for s in seen])

            asyncio.run(main())
            """)
        )
        done = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", str(script),
            env={"PATH": "/usr/bin:/bin", "HOME": str(public)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(done.communicate(), 60)
        assert done.returncode == 0, err.decode()
        assert out.decode().strip() == "65534 True [(0, '65534'), (0, '[] [] 65534')]", (out, err)
    finally:
        shutil.rmtree(public, ignore_errors=True)
