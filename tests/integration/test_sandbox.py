"""Real isolation, attacked from inside: every backend refuses, reports, and keeps working.

Each test runs a job in a real ``bwrap`` and a real ``gvisor`` sandbox, and in a
warm bwrap sandbox (``phage.sandbox.warm``: one sandbox reused, after a scrub,
by the test's next run), in a node-like layout: the node's key directory (mode 0700, a real Ed25519 identity)
holds the scratch root, the running task's workspace and a sibling task's. An
attack must fail (the job errs, or the sandbox kills it and says why), leave the
host untouched, and the same sandbox must then run a trivial command.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import shutil
import socket
import tarfile
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from phage.domain import JobManifest
from phage.node.connection import secure_key_dir
from phage.node.executor import JobExecutor
from phage.pki.attestation import sandbox_hash
from phage.pki.identity import IDENTITY_FILE, NodeIdentity
from phage.sandbox.base import KillReason, Sandbox, SandboxLimits, SandboxOutcome, SandboxRequest
from phage.sandbox.bwrap import BwrapSandbox
from phage.sandbox.registry import BACKENDS
from phage.sandbox.scratch import ScratchVolumes
from phage.sandbox.warm import WarmPool
from phage.sandbox.warm import unavailable_reason as warm_unavailable

pytestmark = pytest.mark.backend_neutral  # jobs run in a sandbox directly; no coordinator, no store

REAL = {"bwrap": "bwrap", "gvisor": "runsc"}
LIMITS = SandboxLimits(
    wall_s=60,
    memory_bytes=64 * 1024**2,
    pids=64,
    scratch_bytes=16 * 1024**2,
    output_bytes=8 * 1024**2,
    log_bytes=16 * 1024,
)
SECRET = "sibling-secret-7f3a"


class WarmBwrap(BwrapSandbox):
    """bwrap through warm sandboxes: each run's workspace is copied into a warm sandbox's and back.

    A node unpacks straight into the warm sandbox's workspace; the copies only let
    these tests hand it a workspace of their own making and read it afterwards.
    """

    def __init__(self, root: Path | None = None) -> None:
        volumes = ScratchVolumes.detect()
        self.pool = WarmPool(
            root or Path(tempfile.mkdtemp()), volumes if isinstance(volumes, ScratchVolumes) else None, size=2
        )

    async def run(self, request: SandboxRequest) -> SandboxOutcome:
        lease = await self.pool.acquire(request)
        assert lease is not None, "no warm sandbox could be started"
        reuse = False
        try:
            await asyncio.to_thread(
                shutil.copytree, request.workdir, lease.workdir, symlinks=True, dirs_exist_ok=True
            )
            outcome = await lease.run(replace(request, workdir=lease.workdir))
            await asyncio.to_thread(
                shutil.copytree, lease.workdir, request.workdir, symlinks=True, dirs_exist_ok=True
            )
            reuse = True
            return outcome
        finally:
            self.pool.release(lease, reuse=reuse)


@pytest.fixture(scope="module", params=[*sorted(REAL), "bwrap-warm"])
def sandbox_backend(request: pytest.FixtureRequest) -> str:
    """Each real backend; skipped only where its program is not installed at all."""
    name: str = request.param
    program = REAL[name.removesuffix("-warm")]
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (scripts/setup.sh installs it)")
    reason = warm_unavailable() if name == "bwrap-warm" else BACKENDS[name].unavailable_reason()
    assert reason is None, f"{name} is installed but does not work here: {reason}"
    return name


@pytest.fixture
async def sandbox(sandbox_backend: str, tmp_path: Path) -> AsyncIterator[Sandbox]:
    if sandbox_backend != "bwrap-warm":
        yield BACKENDS[sandbox_backend]()
        return
    root = tmp_path / "warm"
    root.mkdir(mode=0o700)
    warm = WarmBwrap(root)
    yield warm
    await warm.pool.close()


@dataclass
class Node:
    """A node's on-disk layout, as ``phage node`` makes it."""

    key_dir: Path
    data_dir: Path
    workdir: Path
    sibling: Path


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    key_dir = tmp_path / "node"
    key_dir.mkdir()
    secure_key_dir(key_dir)
    NodeIdentity.load_or_create(key_dir)
    data_dir = tmp_path / "coordinator-data"
    data_dir.mkdir()
    (data_dir / "store.db").write_text("the node's state")
    workdir = key_dir / "work" / "a-1"
    sibling = key_dir / "work" / "a-2"
    workdir.mkdir(parents=True)
    sibling.mkdir()
    (sibling / "secret.txt").write_text(SECRET)
    (workdir / "input.txt").write_text("hello from the workspace\n")
    yield Node(key_dir, data_dir, workdir, sibling)


async def run(
    sandbox: Sandbox, node: Node, argv: list[str], env: dict[str, str] | None = None, **limits: Any
) -> SandboxOutcome:
    request = SandboxRequest(argv, node.workdir, env=env or {}, limits=replace(LIMITS, **limits))
    return await sandbox.run(request)


async def py(sandbox: Sandbox, node: Node, code: str, **limits: Any) -> SandboxOutcome:
    return await run(sandbox, node, ["/usr/bin/python3", "-c", textwrap.dedent(code)], **limits)


async def still_works(sandbox: Sandbox, node: Node) -> None:
    """The next task (its own fresh workspace, as the node gives it) runs normally."""
    fresh = node.workdir.parent / "next"
    fresh.mkdir()
    outcome = await sandbox.run(SandboxRequest(["/bin/sh", "-c", "echo still-ok"], fresh, limits=LIMITS))
    assert outcome.exit_code == 0, outcome
    assert outcome.stdout_tail.strip() == "still-ok"
    assert outcome.killed_reason == ""


def refused(outcome: SandboxOutcome) -> None:
    assert outcome.exit_code != 0, outcome
    assert outcome.killed_reason == "", outcome
    assert "Traceback" in outcome.stderr_tail, outcome  # the job saw its attempt fail


# ---- what a job may do -------------------------------------------------------


async def test_python_job_reads_workspace_writes_outputs_as_nobody(sandbox: Sandbox, node: Node) -> None:
    main = """
        import os, sys
        text = open("input.txt").read()
        os.makedirs("out", exist_ok=True)
        with open("out/result.txt", "w") as fh:
            fh.write(text.upper())
        print("uid", os.getuid(), os.geteuid(), os.getgid(), "exe", sys.executable, "cwd", os.getcwd())
        """
    files = {"main.py": textwrap.dedent(main).encode(), "input.txt": b"hello from the workspace\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    executor = JobExecutor(node.key_dir / "work", 16 * 1024)
    manifest = JobManifest(entrypoint="main.py", interpreter="python3", outputs=("out/*.txt",), timeout_s=60)
    result, outputs = await executor.run(sandbox, "a-3", manifest, buf.getvalue(), 1 << 20)
    assert result.exit_code == 0, result
    assert "uid 65534 65534 65534 exe /usr/bin/python3 cwd /workspace" in result.stdout_tail
    assert [o.path for o in outputs] == ["out/result.txt"]
    assert outputs[0].local.read_text() == "HELLO FROM THE WORKSPACE\n"


async def test_environment_is_clean_and_the_tasks_own(sandbox: Sandbox, node: Node) -> None:
    outcome = await run(sandbox, node, ["/usr/bin/env"], env={"TASK_VAR": "42"})
    assert outcome.exit_code == 0, outcome
    env = dict(line.split("=", 1) for line in outcome.stdout_tail.splitlines() if "=" in line)
    assert env["TASK_VAR"] == "42" and env["HOME"] == "/workspace"
    assert not {k for k in env if k.startswith(("PHAGE", "PYTEST", "VIRTUAL_ENV"))}


async def test_only_the_sandbox_processes_are_visible(sandbox: Sandbox, node: Node) -> None:
    outcome = await py(sandbox, node, "import os; print(sum(p.isdigit() for p in os.listdir('/proc')))")
    assert outcome.exit_code == 0, outcome
    assert int(outcome.stdout_tail) < 5


# ---- network -----------------------------------------------------------------


async def test_cannot_reach_a_listener_on_the_hosts_loopback(sandbox: Sandbox, node: Node) -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet sent: just picks the host's own address
            host_ip = probe.getsockname()[0]
        for address in ("127.0.0.1", host_ip):
            started = time.monotonic()
            outcome = await py(
                sandbox,
                node,
                f"""
                import socket
                s = socket.create_connection(({address!r}, {port}), timeout=5)
                s.sendall(b"escaped")
                """,
            )
            refused(outcome)
            assert time.monotonic() - started < 20
            with pytest.raises(BlockingIOError):
                listener.accept()
    await still_works(sandbox, node)


async def test_cannot_resolve_or_reach_the_outside(sandbox: Sandbox, node: Node) -> None:
    for code in (
        "import socket; print(socket.getaddrinfo('pypi.org', 443))",
        "import socket; socket.create_connection(('1.1.1.1', 53), timeout=5)",
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))",
        "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/', timeout=5)",
    ):
        started = time.monotonic()
        outcome = await py(sandbox, node, code)
        refused(outcome)
        assert time.monotonic() - started < 20, "a blocked network must fail fast, not time out"
    await still_works(sandbox, node)


# ---- filesystem --------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["/etc/phage-x", "/usr/phage-x", "/phage-x", "DATA", "KEYS", "/dev/phage-x"]
)
async def test_cannot_write_outside_the_workspace(sandbox: Sandbox, node: Node, where: str) -> None:
    target = {"DATA": node.data_dir / "x", "KEYS": node.key_dir / "x"}.get(where, Path(where))
    outcome = await py(sandbox, node, f"open({str(target)!r}, 'w').write('pwned')")
    refused(outcome)
    assert not target.exists()
    assert (node.data_dir / "store.db").read_text() == "the node's state"
    await still_works(sandbox, node)


@pytest.mark.parametrize("how", ["absolute", "relative"])
async def test_cannot_read_another_tasks_workspace(sandbox: Sandbox, node: Node, how: str) -> None:
    path = str(node.sibling / "secret.txt") if how == "absolute" else "../a-2/secret.txt"
    outcome = await py(sandbox, node, f"print(open({path!r}).read())")
    refused(outcome)
    assert SECRET not in outcome.stdout_tail
    await still_works(sandbox, node)


async def test_cannot_read_the_nodes_private_key(sandbox: Sandbox, node: Node) -> None:
    key = node.key_dir / IDENTITY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    outcome = await py(sandbox, node, f"print(open({str(key)!r}).read())")
    refused(outcome)
    assert "PRIVATE KEY" not in outcome.stdout_tail
    # nor anywhere by name (/usr is the host's, read-only, and holds no node state): the key
    # directory, the sibling's workspace and the data directory are simply not there
    hunt = await py(
        sandbox,
        node,
        f"""
        import os
        names, found = ({IDENTITY_FILE!r}, "tls-key.pem", "secret.txt", "store.db"), []
        for d, dirs, files in os.walk("/"):
            if d == "/":
                dirs[:] = [x for x in dirs if x not in ("proc", "sys", "usr")]
            found += [os.path.join(d, f) for f in files if f in names]
        print(found)
        """,
    )
    assert hunt.exit_code == 0, hunt
    assert hunt.stdout_tail.strip() == "[]"
    await still_works(sandbox, node)


async def test_host_private_places_are_not_there(sandbox: Sandbox, node: Node) -> None:
    places = ["/root", "/home", "/work", "/var", "/etc/shadow", "/etc/ssl/private", str(Path.cwd())]
    outcome = await py(sandbox, node, f"import os; print([p for p in {places!r} if os.path.lexists(p)])")
    assert outcome.exit_code == 0, outcome
    assert outcome.stdout_tail.strip() == "[]"


# ---- limits ------------------------------------------------------------------


async def test_a_fork_bomb_is_stopped_and_reported(sandbox: Sandbox, node: Node) -> None:
    # memory to spare (as the default limits give): the process limit, not memory, must stop it
    started = time.monotonic()
    outcome = await py(
        sandbox,
        node,
        """
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.001)
        """,
        memory_bytes=1024**3,
    )
    assert time.monotonic() - started < 20, outcome
    assert outcome.killed_reason == KillReason.PIDS, outcome
    assert outcome.exit_code != 0 and "process limit" in outcome.stderr_tail
    await still_works(sandbox, node)


async def test_allocating_four_times_the_memory_limit_is_killed(sandbox: Sandbox, node: Node) -> None:
    outcome = await py(sandbox, node, "b = bytearray(4 * 64 * 1024 * 1024); print('allocated')")
    assert outcome.killed_reason == KillReason.MEMORY, outcome
    assert outcome.exit_code != 0 and "allocated" not in outcome.stdout_tail
    await still_works(sandbox, node)


async def test_running_past_the_time_limit_is_killed(sandbox: Sandbox, node: Node) -> None:
    started = time.monotonic()
    outcome = await run(sandbox, node, ["/bin/sh", "-c", "sleep 60 & sleep 60"], wall_s=1.5)
    assert time.monotonic() - started < 15
    assert outcome.killed_reason == KillReason.TIMEOUT and outcome.timed_out, outcome
    assert outcome.exit_code == 124
    await still_works(sandbox, node)


@pytest.mark.parametrize("shape", ["one-file-sh", "one-file-python", "many-files"])
async def test_filling_scratch_past_its_cap_is_killed(sandbox: Sandbox, node: Node, shape: str) -> None:
    # the shell dies of SIGXFSZ at the file-size rlimit; Python ignores it and gets EFBIG;
    # many files each under the cap are caught by the guard's watch on the directory
    argv = {
        "one-file-sh": ["/bin/sh", "-c", "head -c 67108864 /dev/zero > big && echo survived"],
        "one-file-python": [
            "/usr/bin/python3", "-c",
            "with open('big', 'wb') as fh:\n    for _ in range(64): fh.write(bytes(1024 * 1024))",
        ],
        "many-files": [
            "/usr/bin/python3", "-c",
            "import time\nfor i in range(64): open(f'p{i}', 'wb').write(bytes(1 << 20))\ntime.sleep(30)",
        ],
    }[shape]  # fmt: skip
    started = time.monotonic()
    outcome = await run(sandbox, node, argv)
    assert time.monotonic() - started < 20
    assert outcome.killed_reason == KillReason.SCRATCH, outcome
    assert "scratch" in outcome.stderr_tail and "survived" not in outcome.stdout_tail
    await still_works(sandbox, node)


async def test_printing_a_gigabyte_is_cut_off_at_the_output_cap(sandbox: Sandbox, node: Node) -> None:
    started = time.monotonic()
    outcome = await run(sandbox, node, ["/bin/sh", "-c", "head -c 1000000000 /dev/zero; echo finished"])
    assert time.monotonic() - started < 20
    assert outcome.killed_reason == KillReason.OUTPUT, outcome
    assert "finished" not in outcome.stdout_tail and len(outcome.stdout_tail) <= 2 * LIMITS.log_bytes
    await still_works(sandbox, node)


async def test_cpu_is_limited(sandbox: Sandbox, node: Node) -> None:
    # CPU time of everything the run started (bwrap or runsc, gVisor itself, the task), as the host
    # counts it once they are reaped; other load on the machine can only lower it
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = await py(
        sandbox,
        node,
        """
        import time
        end = time.monotonic() + 2
        while time.monotonic() < end:
            pass
        print("spun")
        """,
        cpus=0.25,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert outcome.exit_code == 0 and "spun" in outcome.stdout_tail, outcome
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu / outcome.wall_s < 0.45, (cpu, outcome.wall_s)


async def test_bwrap_denies_kernel_attack_surface(sandbox: Sandbox, node: Node) -> None:
    if sandbox.name != "bwrap":
        pytest.skip("gVisor's Sentry answers system calls itself; the host kernel never sees them")
    outcome = await py(
        sandbox,
        node,
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for name, nr in (("io_uring_setup", 425), ("bpf", 321), ("keyctl", 250), ("userfaultfd", 323)):
            assert libc.syscall(nr, 0, 0, 0) == -1 and ctypes.get_errno() == 1, name
        assert libc.unshare(0x10000000) == -1  # CLONE_NEWUSER
        print("unshare refused:", ctypes.get_errno())
        print("all denied")
        """,
    )
    assert outcome.exit_code == 0, outcome
    assert "all denied" in outcome.stdout_tail and "unshare refused: 1" in outcome.stdout_tail
    await still_works(sandbox, node)


@pytest.mark.parametrize("tmp_mib", [16, 512])
async def test_tmp_is_small_and_counts_as_memory(sandbox: Sandbox, node: Node, tmp_mib: int) -> None:
    # a small /tmp is full before memory is; a large one still cannot hold more than the memory limit
    code = "f = open('/tmp/fill', 'wb')\nfor _ in range(128): f.write(bytes(1 << 20))\nprint('wrote')"
    outcome = await run(
        sandbox, node, ["/usr/bin/python3", "-c", code], tmp_bytes=tmp_mib << 20, scratch_bytes=1 << 30
    )
    assert "wrote" not in outcome.stdout_tail, outcome
    if tmp_mib == 16:
        assert "No space left on device" in outcome.stderr_tail and outcome.killed_reason == ""
    else:
        assert outcome.killed_reason == KillReason.MEMORY, outcome
    await still_works(sandbox, node)


def test_description_is_stable_json_for_attestations(sandbox: Sandbox) -> None:
    first, second = sandbox.describe(), type(sandbox)().describe()
    assert first == second and first["backend"] == sandbox.name and first["network"] == "none"
    assert len(sandbox_hash(first)) == 64
    assert "/tmp/" not in json.dumps(first)  # no temporary paths: equal configurations hash equal


async def test_a_withdrawn_run_leaves_nothing_running(sandbox: Sandbox, node: Node) -> None:
    # the node cancels a run when its task is withdrawn: bwrap or runsc, gVisor and the job must go
    me = psutil.Process()
    task = asyncio.ensure_future(run(sandbox, node, ["/bin/sh", "-c", "sleep 300 & sleep 300"]))
    deadline = time.monotonic() + 20
    while len(me.children(recursive=True)) < (6 if sandbox.name == "gvisor" else 4):
        assert time.monotonic() < deadline, me.children(recursive=True)
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert left == []
    await still_works(sandbox, node)


async def test_bwrap_without_cgroups_falls_back_to_rlimits(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # where no cgroup is writable, RLIMIT_AS bounds memory and RLIMIT_NPROC (of uid 65534) processes
    from phage.sandbox import bwrap

    tools = bwrap.host_tools()
    if isinstance(tools, str) or not tools.privileged:
        pytest.skip(f"needs a working bwrap as root: {tools}")
    monkeypatch.setattr(bwrap, "host_tools", lambda: replace(tools, cgroups=None))
    sandbox = bwrap.BwrapSandbox()
    assert sandbox.describe()["memory"] == "rlimit-as" and sandbox.describe()["pids"] == "rlimit-nproc"
    memory = await py(sandbox, node, "b = bytearray(4 * 64 * 1024 * 1024)")
    assert memory.exit_code != 0 and "MemoryError" in memory.stderr_tail, memory
    bomb = await py(
        sandbox,
        node,
        """
        import os, time
        born = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(3)
                    os._exit(0)
                born += 1
            except OSError:
                break
        print("born", born)
        """,
        wall_s=10,
    )
    assert bomb.exit_code == 0, bomb
    assert int(bomb.stdout_tail.split()[-1]) < LIMITS.pids  # (other uid-65534 processes count too)
    await still_works(sandbox, node)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged user can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="phage-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_bwrap_works_for_an_unprivileged_node(public_tmp: Path) -> None:
    # a node run as an ordinary user: no cgroups, no uid switch; bwrap maps its uid to 65534
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        pytest.skip("needs root (to become an unprivileged user for the test) and bwrap")
    src = Path(__file__).resolve().parents[2] / "src"
    if not all(os.stat(p).st_mode & 0o005 == 0o005 for p in [src, *src.parents]):
        pytest.skip(f"{src} is not readable by other users")
    tmp_path = public_tmp
    script = tmp_path / "node.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, sys
            sys.path.insert(0, {str(src)!r})
            from pathlib import Path
            from phage.sandbox.base import SandboxLimits, SandboxRequest
            from phage.sandbox.bwrap import BwrapSandbox
            assert BwrapSandbox.unavailable_reason() is None, BwrapSandbox.unavailable_reason()
            work = Path({str(tmp_path)!r}) / "work"
            work.mkdir()
            (work / "in.txt").write_text("hi\\n")
            argv = ["/bin/sh", "-c", "id -u; cat in.txt; touch /etc/x || echo etc-refused"]
            out = asyncio.run(BwrapSandbox().run(SandboxRequest(argv, work, limits=SandboxLimits(wall_s=30))))
            print(os.getuid(), out.exit_code, out.stdout_tail.split(), BwrapSandbox().describe()["host_uid"])
            """
        )
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", str(script),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    assert out.decode().split("\n")[0] == "65534 0 ['65534', 'hi', 'etc-refused'] node"
