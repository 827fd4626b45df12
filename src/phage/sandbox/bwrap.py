"""The ``bwrap`` backend: bubblewrap namespaces on a minimal read-only root, cgroups, rlimits.

A run gets, on the host's kernel:

- its own user, mount, pid, network, IPC, UTS and cgroup namespaces; no network
  at all (its own loopback only); no further user namespaces (``--disable-userns``);
  a seccomp filter denying io_uring, eBPF, perf, userfaultfd, key rings, mounts and
  the like (``seccomp``);
- uid/gid 65534 inside. A root node also *is* 65534 on the host: the wrapper drops
  to it (``setpriv``, empty capability bounding set, no-new-privs) before bwrap
  creates the user namespace, so even an escape is ``nobody``, never root. The
  workspace is handed to that uid first. Since the node's scratch root may sit in
  its 0700 key directory, the workspace is bind-mounted onto the stage's ``mnt/``
  inside a private mount namespace (``unshare``) the dropped bwrap can reach;
- a read-only root: an empty tmpfs with ``/usr`` bound read-only, the host's
  ``/bin``/``/lib*``/``/sbin`` layout, a synthesised ``/etc`` (see ``rootfs``), a
  fresh ``/proc`` and ``/dev`` (read-only); writable: ``/workspace`` and two small
  tmpfs (``/tmp``, ``/dev/shm``) whose pages count against the memory limit;
- limits: a cgroup (v2 or v1) with memory, pids and CPU; rlimits (file size = the
  scratch cap, open files, no core; address space / process count only where no
  cgroup does it); the guard's watch on cgroup events and scratch size; the output
  cap and wall clock of ``run_process``.

bwrap's options travel through a memfd (``--args``), not the command line, so a
task's environment is not readable in the host's ``/proc/*/cmdline``; nothing of
the task reaches the privileged wrapper's own environment.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from phage.errors import InvalidInput, SandboxError
from phage.sandbox.base import Sandbox, SandboxLimits, SandboxOutcome, SandboxRequest
from phage.sandbox.cgroups import CgroupLimits, Cgroups, RunCgroup
from phage.sandbox.limits import LimitGuard, nproc_args, ulimit_script
from phage.sandbox.process import run_process
from phage.sandbox.rootfs import SANDBOX_GID, SANDBOX_UID, WORKSPACE, Stage, grant_workspace, stage
from phage.sandbox.scratch import scratch_mechanism
from phage.sandbox.seccomp import DENIED_X86_64, native_filter

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
WRAPPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
"""The whole environment of the host-side wrapper; the task's goes only to bwrap's child."""
SETUP_FAILED = 125
"""Exit code of a wrapper that could not join the cgroup, bind the workspace or set an rlimit."""
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; '
BIND = 'mount --bind -- "$1" "$2" || exit 125; shift 2; '
PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class HostTools:
    """What this machine offers the backend, found once."""

    tools: dict[str, str]
    privileged: bool
    cgroups: Cgroups | None
    cgroup_problem: str
    version: str


def check_request(request: SandboxRequest) -> None:
    """Refuse what could not be passed on faithfully: a NUL would split bwrap's ``--args``
    stream (and smuggle in options), ``=`` in a name would shift a variable's value."""
    if not request.argv:
        raise InvalidInput("the command is empty", field="argv")
    if any("\0" in arg for arg in request.argv):
        raise InvalidInput("the command may not contain NUL characters", field="argv")
    for key, value in request.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidInput(
                f"environment variable {key!r} has a bad name or a NUL in its value", field="env"
            )


def sandbox_env(request: SandboxRequest) -> dict[str, str]:
    """The environment inside: a fixed base, then the task's own variables."""
    check_request(request)
    return {
        "PATH": SANDBOX_PATH,
        "HOME": WORKSPACE,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "USER": "nobody",
        "LOGNAME": "nobody",
        **request.env,
    }


@functools.cache
def host_tools() -> HostTools | str:
    """The tools and cgroups this backend uses here, or what is missing."""
    privileged = os.geteuid() == 0
    names = ["bwrap", "sh", "prlimit"] + (["setpriv", "unshare", "mount"] if privileged else [])
    tools = {name: shutil.which(name, path=WRAPPER_ENV["PATH"]) for name in names}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian: apt-get install bubblewrap util-linux)"
    found = {name: path for name, path in tools.items() if path is not None}
    try:
        version = subprocess.run(
            [found["bwrap"], "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap --version failed: {exc}"
    detected = Cgroups.detect()
    cgroups = detected if isinstance(detected, Cgroups) else None
    return HostTools(found, privileged, cgroups, detected if isinstance(detected, str) else "", version)


def bwrap_options(
    request: SandboxRequest,
    *,
    stage: Stage,
    source: str,
    seccomp_fd: int | None = None,
    as_pid_1: bool = False,
) -> list[str]:
    """bwrap's options for one run (the ``--args`` payload), ``source`` being the workspace to bind.

    ``as_pid_1`` makes the command the pid namespace's init (a warm sandbox's supervisor).
    """
    limits = request.limits
    opts = [] if seccomp_fd is None else ["--seccomp", str(seccomp_fd)]
    opts += ["--as-pid-1"] if as_pid_1 else []
    opts += [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_GID),
        "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for entry in stage.layout:
        if entry.link is not None:
            opts += ["--symlink", entry.link, f"/{entry.name}"]
        else:
            opts += ["--ro-bind", f"/{entry.name}", f"/{entry.name}"]
    tmp = str(limits.tmp_bytes)
    opts += [
        "--ro-bind", str(stage.etc), "/etc",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", tmp, "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--size", tmp, "--tmpfs", "/tmp",
        "--bind", source, WORKSPACE,
        "--chdir", WORKSPACE,
        "--remount-ro", "/",
        "--clearenv",
    ]  # fmt: skip
    for key, value in sandbox_env(request).items():
        opts += ["--setenv", key, value]
    return opts


def wrapper_argv(
    request: SandboxRequest, *, tools: HostTools, stage: Stage, cgroup: RunCgroup | None, args_fd: int
) -> list[str]:
    """The host-side command: join the cgroup, (root) bind and drop to 65534, set rlimits, bwrap.

    One shell does the joining, the binding and the rlimits (builtins: no exec
    each); ``prlimit`` appears only for the rare RLIMIT_NPROC fallback.
    """
    t = tools.tools
    has = set(cgroup.dirs) if cgroup is not None else set()
    script = JOIN + (BIND if tools.privileged else "")
    script += ulimit_script(request.limits, memory_rlimit="memory" not in has) + 'exec "$@"'
    tail: list[str] = []
    nproc = nproc_args(request.limits) if "pids" not in has and tools.privileged else []
    if nproc:
        tail += [t["prlimit"], *nproc, "--"]
    if tools.privileged:
        tail += [
            t["setpriv"], f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]  # fmt: skip
    tail += [t["bwrap"], "--args", str(args_fd), "--", *request.argv]
    procs = cgroup.procs_files if cgroup is not None else []
    shell = [t["sh"], "-c", script, "phage-sandbox", *procs, "--"]
    if tools.privileged:
        shell += [str(request.workdir), str(stage.mnt)]
        return [t["unshare"], "--mount", "--propagation", "private", "--", *shell, *tail]
    return [*shell, *tail]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class BwrapFds:
    """The memfds one run hands to bwrap: its options and its seccomp filter."""

    def __init__(self, request: SandboxRequest, st: Stage, source: str, *, as_pid_1: bool = False) -> None:
        self.fds: list[int] = []
        seccomp = native_filter()
        seccomp_fd = None if seccomp is None else self._add("phage-seccomp", seccomp)
        options = bwrap_options(request, stage=st, source=source, seccomp_fd=seccomp_fd, as_pid_1=as_pid_1)
        self.args_fd = self._add("phage-bwrap-args", b"".join(o.encode() + b"\0" for o in options))

    def _add(self, name: str, data: bytes) -> int:
        try:
            fd = _memfd(name, data)
        except BaseException:
            self.close()
            raise
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def cgroup_limits(limits: SandboxLimits) -> CgroupLimits:
    return CgroupLimits(memory_bytes=limits.memory_bytes, pids=limits.pids, cpus=limits.cpus)


class BwrapSandbox(Sandbox):
    """Namespaces + minimal read-only root + cgroups + rlimits, on the host kernel."""

    name = "bwrap"

    @classmethod
    @functools.cache
    def unavailable_reason(cls) -> str | None:
        """Run ``id -u`` in a real sandbox once; None if it answered 65534."""
        tools = host_tools()
        if isinstance(tools, str):
            return tools
        return _probe(tools)

    def _tools(self) -> HostTools:
        tools = host_tools()
        if isinstance(tools, str):
            raise SandboxError(f"sandbox backend 'bwrap' is unavailable here: {tools}", field="sandbox")
        return tools

    def describe(self) -> dict[str, object]:
        """How runs are isolated here (mechanisms, not per-run values)."""
        tools = self._tools()
        cg = tools.cgroups
        has = set(cg.controllers) if cg is not None else set()
        return {
            "backend": self.name,
            "version": tools.version,
            "network": "none",
            "namespaces": ["user", "mount", "pid", "net", "ipc", "uts", "cgroup"],
            "nested_user_namespaces": False,
            "seccomp_denied": sorted(DENIED_X86_64) if native_filter() is not None else None,
            "uid": SANDBOX_UID,
            "host_uid": SANDBOX_UID if tools.privileged else "node",
            "root": "tmpfs, read-only",
            "writable": [WORKSPACE, "/tmp (tmpfs)", "/dev/shm (tmpfs)"],
            **stage().describe(),
            "cgroups": cg.describe() if cg is not None else None,
            "memory": "cgroup" if "memory" in has else "rlimit-as",
            "pids": "cgroup" if "pids" in has else ("rlimit-nproc" if tools.privileged else "none"),
            "cpu": "cgroup" if "cpu" in has else "none",
            "scratch": scratch_mechanism(),
            "output": "cap + kill",
        }

    async def run(self, request: SandboxRequest) -> SandboxOutcome:
        """Run the request in a fresh bwrap sandbox; the outcome says which limit, if any, ended it."""
        tools = self._tools()
        st = stage()
        cgroup = tools.cgroups.create(cgroup_limits(request.limits)) if tools.cgroups else None
        try:
            if tools.privileged:
                await asyncio.to_thread(grant_workspace, request.workdir)
            source = str(st.mnt) if tools.privileged else str(request.workdir)
            fds = BwrapFds(request, st, source)
            try:
                argv = wrapper_argv(request, tools=tools, stage=st, cgroup=cgroup, args_fd=fds.args_fd)
                return await run_process(
                    argv,
                    cwd="/",
                    env=dict(WRAPPER_ENV),
                    wall_s=request.limits.wall_s,
                    log_bytes=request.limits.log_bytes,
                    output_bytes=request.limits.output_bytes,
                    guard=LimitGuard(workdir=request.workdir, limits=request.limits, cgroup=cgroup),
                    pass_fds=tuple(fds.fds),
                )
            finally:
                fds.close()
        finally:
            if cgroup is not None:
                await cgroup.remove()


def _probe(tools: HostTools) -> str | None:
    try:
        st = stage()
    except OSError as exc:
        return f"cannot build the sandbox's root: {exc}"
    with tempfile.TemporaryDirectory(prefix="phage-probe-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        request = SandboxRequest(["/usr/bin/id", "-u"], workdir, limits=SandboxLimits(wall_s=PROBE_TIMEOUT_S))
        cgroup = None
        try:
            if tools.cgroups is not None:
                cgroup = tools.cgroups.create(cgroup_limits(request.limits))
            if tools.privileged:
                grant_workspace(workdir)
            source = str(st.mnt) if tools.privileged else str(workdir)
            fds = BwrapFds(request, st, source)
            try:
                argv = wrapper_argv(request, tools=tools, stage=st, cgroup=cgroup, args_fd=fds.args_fd)
                done = subprocess.run(
                    argv,
                    env=dict(WRAPPER_ENV),
                    cwd="/",
                    capture_output=True,
                    text=True,
                    timeout=PROBE_TIMEOUT_S,
                    pass_fds=tuple(fds.fds),
                    check=False,
                )
            finally:
                fds.close()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"a trial sandbox could not start: {exc}"
        finally:
            if cgroup is not None:
                cgroup.remove_blocking()
    if done.returncode != 0 or done.stdout.strip() != str(SANDBOX_UID):
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")[-300:]
        return f"a trial sandbox failed: {detail}"
    return None
