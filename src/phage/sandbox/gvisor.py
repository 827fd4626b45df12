"""The ``gvisor`` backend: runsc, a user-space kernel, on the same minimal read-only root.

The task's system calls go to gVisor's Sentry, not to the host kernel; the Sentry
runs as ``nobody`` in its own namespaces under a seccomp filter, and reaches files
only through its Gofer. A run gets:

- ``--network=none``: the Sentry's own netstack with a loopback and nothing else;
- uid/gid 65534 inside (checked by the Sentry; the workspace is handed to that uid
  on the host so files it writes are ``nobody``'s there too), no capabilities,
  no-new-privs;
- an OCI bundle whose read-only root is the shared stage (``rootfs``: mount points,
  the host's ``/bin``/``/lib*`` links, the synthesised ``/etc``), with ``/usr`` bound
  read-only, gVisor's own ``/proc``, ``/dev``, ``/sys``, a size-limited tmpfs
  ``/tmp`` and ``/dev/shm`` (Sentry memory, so inside the memory limit), and
  ``/workspace`` bound read-write;
- limits: the wrapper joins a cgroup before exec'ing runsc (``--ignore-cgroups``:
  runsc leaves cgroups alone), so Sentry, Gofer and everything they start are in
  it. The memory limit covers the whole sandbox, gVisor included, with
  ``MEMORY_OVERHEAD`` added for gVisor itself. The process limit is RLIMIT_NPROC
  in the OCI spec, enforced exactly by the Sentry; the host sees one ptrace stub
  process per task process, so the guard ends a run whose task reaches its limit
  (a fork bomb) and reports ``pids``. The host cgroup's pids limit is only a
  backstop on gVisor's threads (10–25 per task process). File size, open files
  and core size are rlimits in the spec, enforced by the Sentry as well.

Platform ``ptrace``: the ``kvm`` platform hangs on this kind of (nested) VM.
Known limit of Debian 12's runsc (release 20221219): coreutils' ``statx`` gets
``EINVAL``, so ``ls -l`` and ``stat`` fail inside; Python, ``cp``, ``find``, shells work.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phage.errors import SandboxError
from phage.sandbox.base import KillReason, Sandbox, SandboxLimits, SandboxOutcome, SandboxRequest
from phage.sandbox.bwrap import JOIN, WRAPPER_ENV, sandbox_env
from phage.sandbox.cgroups import CgroupLimits, Cgroups, RunCgroup
from phage.sandbox.limits import NOFILE, LimitGuard
from phage.sandbox.process import Breach, run_process
from phage.sandbox.rootfs import (
    SANDBOX_GID,
    SANDBOX_UID,
    WORKSPACE,
    Stage,
    grant_workspace,
    private_dir,
    stage,
)
from phage.sandbox.scratch import scratch_mechanism

PLATFORM = "ptrace"
MEMORY_OVERHEAD = 64 * 1024**2
"""Added to the memory limit for gVisor's own Sentry, Gofer and runsc (about 25 MiB measured)."""
HOST_PROCESSES = 4
"""Host processes of a gVisor sandbox besides one stub per task process: runsc, Gofer, Sentry,
and the ptrace platform's stub parent. Counting the rest gives the task's process count."""
TASK_OVERHEAD = 256
"""Host threads gVisor needs before the task starts any process (about 60–100 measured)."""
TASKS_PER_PROCESS = 32
"""Host threads per task process the backstop allows (10–25 measured; more while forks fail)."""
PROBE_TIMEOUT_S = 60.0
_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class RunscHost:
    """runsc, sh and cgroups on this machine, found once."""

    runsc: str
    sh: str
    setpriv: str
    version: str
    cgroups: Cgroups | None


@functools.cache
def runsc_host() -> RunscHost | str:
    """runsc and cgroups here, or what is missing."""
    runsc = shutil.which("runsc", path=WRAPPER_ENV["PATH"])
    sh = shutil.which("sh", path=WRAPPER_ENV["PATH"])
    setpriv = shutil.which("setpriv", path=WRAPPER_ENV["PATH"])
    if runsc is None or sh is None:
        return "runsc is not installed (Debian: apt-get install runsc)"
    if setpriv is None:
        return "setpriv is not installed (Debian: apt-get install util-linux)"
    if os.geteuid() != 0:
        return "runsc needs root to build its sandbox (this node runs as an unprivileged user)"
    try:
        done = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"runsc --version failed: {exc}"
    version = done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"
    detected = Cgroups.detect()
    return RunscHost(runsc, sh, setpriv, version, detected if isinstance(detected, Cgroups) else None)


def host_limits(limits: SandboxLimits) -> CgroupLimits:
    """The cgroup limits around the whole sandbox, gVisor's own needs added."""
    return CgroupLimits(
        memory_bytes=None if limits.memory_bytes is None else limits.memory_bytes + MEMORY_OVERHEAD,
        pids=None if limits.pids is None else TASK_OVERHEAD + TASKS_PER_PROCESS * limits.pids,
        cpus=limits.cpus,
    )


def _rlimit(kind: str, value: int) -> dict[str, Any]:
    return {"type": kind, "soft": value, "hard": value}


def oci_spec(request: SandboxRequest, *, stage: Stage, cgroup: RunCgroup | None) -> dict[str, Any]:
    """The OCI runtime spec of one run."""
    limits = request.limits
    has = set(cgroup.dirs) if cgroup is not None else set()
    rlimits = [_rlimit("RLIMIT_NOFILE", NOFILE), _rlimit("RLIMIT_CORE", 0)]
    if limits.scratch_bytes is not None:
        rlimits.append(_rlimit("RLIMIT_FSIZE", limits.scratch_bytes))
    if "memory" not in has and limits.memory_bytes is not None:
        rlimits.append(_rlimit("RLIMIT_AS", limits.memory_bytes))
    if limits.pids is not None:
        # the Sentry counts the task's processes exactly; the host cgroup only sees its threads
        rlimits.append(_rlimit("RLIMIT_NPROC", limits.pids))
    ro = ["rbind", "ro", "nosuid", "nodev"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        *(
            {
                "destination": where,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", f"size={limits.tmp_bytes}"],
            }
            # /dev/shm: POSIX semaphores and shared memory (Python's multiprocessing needs them)
            for where in ("/tmp", "/dev/shm")
        ),
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ro},
    ]
    mounts += [
        {"destination": f"/{e.name}", "type": "bind", "source": f"/{e.name}", "options": ro}
        for e in stage.layout
        if e.link is None
    ]
    mounts.append(
        {
            "destination": WORKSPACE,
            "type": "bind",
            "source": str(request.workdir),
            "options": ["rbind", "rw", "nosuid", "nodev"],
        }
    )
    empty_caps: dict[str, list[str]] = {
        k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_GID, "additionalGids": []},
            "args": list(request.argv),
            "env": [f"{k}={v}" for k, v in sandbox_env(request).items()],
            "cwd": WORKSPACE,
            "capabilities": empty_caps,
            "rlimits": rlimits,
            "noNewPrivileges": True,
        },
        "root": {"path": str(stage.rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }


def runsc_argv(
    host: RunscHost, *, state: Path, bundle: Path, cid: str, cgroup: RunCgroup | None
) -> list[str]:
    """Join the cgroup, then exec ``runsc run`` under a parent-death signal.

    ``runsc run`` is the node's own child (the wrapper shell and ``setpriv`` exec
    into it) and dies with the node, even of ``kill -9`` (strictly, with the thread that started it:
    runs start from the node's event-loop thread, which lives as long as the node); its ``--attached``
    sandbox and Gofer die with it. Without that they would outlive the node,
    running a task the coordinator has meanwhile given to another node.
    """
    runsc = [
        host.setpriv, "--pdeathsig", "KILL", "--",
        host.runsc, "--root", str(state), "--network=none", "--ignore-cgroups", f"--platform={PLATFORM}",
        "run", "--bundle", str(bundle), cid,
    ]  # fmt: skip
    if cgroup is None:
        return runsc
    return [host.sh, "-c", JOIN + 'exec "$@"', "phage-sandbox", *cgroup.procs_files, "--", *runsc]


def _bundle(request: SandboxRequest, st: Stage, cgroup: RunCgroup | None) -> tuple[Path, Path, Path, str]:
    spec = json.dumps(oci_spec(request, stage=st, cgroup=cgroup))  # refuses a bad request first
    run_dir = private_dir("gvisor")
    bundle, state = run_dir / "bundle", run_dir / "state"
    bundle.mkdir()
    state.mkdir()
    (bundle / "config.json").write_text(spec)
    return run_dir, bundle, state, f"phage-{os.getpid()}-{next(_ids)}-{secrets.token_hex(3)}"


class GvisorGuard(LimitGuard):
    """The common guard, plus the task's process count as the host sees it (one stub each)."""

    def _event(self) -> Breach | None:
        found = super()._event()
        pids = self.limits.pids
        # RLIMIT_NPROC stops the task at its limit without a host-visible event; a task at it
        # (a fork bomb retrying) is ended here rather than spinning until the wall clock
        if found is None and self.cgroup is not None and pids is not None:
            found = self._at_process_limit(self.cgroup, pids)
        return found

    @staticmethod
    def _at_process_limit(cgroup: RunCgroup, pids: int) -> Breach | None:
        if len(cgroup.pids()) - HOST_PROCESSES >= pids:
            return Breach(KillReason.PIDS, f"process limit of {pids} reached")
        return None


class GvisorSandbox(Sandbox):
    """gVisor (runsc): the task talks to a user-space kernel, never to the host's."""

    name = "gvisor"

    @classmethod
    @functools.cache
    def unavailable_reason(cls) -> str | None:
        """Run ``id -u`` in a real gVisor sandbox once; None if it answered 65534."""
        host = runsc_host()
        if isinstance(host, str):
            return host
        return _probe(host)

    def _host(self) -> RunscHost:
        host = runsc_host()
        if isinstance(host, str):
            raise SandboxError(f"sandbox backend 'gvisor' is unavailable here: {host}", field="sandbox")
        return host

    def describe(self) -> dict[str, object]:
        """How runs are isolated here (mechanisms, not per-run values)."""
        host = self._host()
        cg = host.cgroups
        has = set(cg.controllers) if cg is not None else set()
        return {
            "backend": self.name,
            "version": host.version,
            "platform": PLATFORM,
            "network": "none",
            "uid": SANDBOX_UID,
            "root": "stage, read-only",
            "writable": [WORKSPACE, "/tmp (tmpfs)", "/dev/shm (tmpfs)"],
            **stage().describe(),
            "cgroups": cg.describe() if cg is not None else None,
            "memory": f"cgroup (+{MEMORY_OVERHEAD} for gVisor)" if "memory" in has else "rlimit-as",
            "pids": "rlimit-nproc" + (" + watch" if "pids" in has else ""),
            "cpu": "cgroup" if "cpu" in has else "none",
            "scratch": scratch_mechanism(),
            "output": "cap + kill",
        }

    async def run(self, request: SandboxRequest) -> SandboxOutcome:
        """Run the request in a fresh gVisor sandbox; the outcome says which limit, if any, ended it."""
        host = self._host()
        st = stage()
        cgroup = host.cgroups.create(host_limits(request.limits)) if host.cgroups else None
        run_dir: Path | None = None
        try:
            await asyncio.to_thread(grant_workspace, request.workdir)
            run_dir, bundle, state, cid = _bundle(request, st, cgroup)
            return await run_process(
                runsc_argv(host, state=state, bundle=bundle, cid=cid, cgroup=cgroup),
                cwd="/",
                env=dict(WRAPPER_ENV),
                wall_s=request.limits.wall_s,
                log_bytes=request.limits.log_bytes,
                output_bytes=request.limits.output_bytes,
                guard=GvisorGuard(workdir=request.workdir, limits=request.limits, cgroup=cgroup),
            )
        finally:
            if cgroup is not None:
                await cgroup.remove()
            if run_dir is not None:
                await asyncio.to_thread(shutil.rmtree, run_dir, True)


def _probe(host: RunscHost) -> str | None:
    try:
        st = stage()
    except OSError as exc:
        return f"cannot build the sandbox's root: {exc}"
    with tempfile.TemporaryDirectory(prefix="phage-probe-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        request = SandboxRequest(["/usr/bin/id", "-u"], workdir, limits=SandboxLimits(wall_s=PROBE_TIMEOUT_S))
        cgroup = host.cgroups.create(host_limits(request.limits)) if host.cgroups else None
        run_dir: Path | None = None
        try:
            grant_workspace(workdir)
            run_dir, bundle, state, cid = _bundle(request, st, cgroup)
            done = subprocess.run(
                runsc_argv(host, state=state, bundle=bundle, cid=cid, cgroup=cgroup),
                env=dict(WRAPPER_ENV),
                cwd="/",
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"a trial sandbox could not start: {exc}"
        finally:
            if cgroup is not None:
                cgroup.remove_blocking()
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
    if done.returncode != 0 or done.stdout.strip() != str(SANDBOX_UID):
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")[-300:]
        return f"a trial sandbox failed: {detail}"
    return None
