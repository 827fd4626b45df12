"""Warm bwrap sandboxes: started ahead, one task at a time, scrubbed between tasks.

Starting a bwrap sandbox the way a root node does — a scratch volume made and
mounted, a cgroup, the privilege-dropping wrapper, bwrap's namespaces, then the
same torn down — costs more CPU than a one-line Python job itself
(BENCHMARKS.md, "Short jobs"). A warm sandbox pays that once: it is the same
sandbox as a cold run (the namespaces, seccomp filter, uid 65534, read-only root,
cgroup, rlimits and its own scratch volume at ``/workspace``), with a supervisor
(``supervisor.py``) as its pid 1 that runs the tasks handed to it one after
another.

Nothing of one task may reach the next, so between two tasks:

- **processes**: every process the task left is killed and reaped by the
  supervisor (``kill(-1)`` from init) before the task counts as ended; checked;
- **files**: the node empties the workspace (after reading the outputs) and
  gives its root back to uid 65534 with mode 0700; the supervisor empties
  ``/tmp`` and ``/dev/shm``; both checked empty;
- **IPC**: System V objects are removed and checked gone; POSIX message queues
  (kept in the IPC namespace, where nothing can list them) are denied to every
  bwrap run by the seccomp filter;
- **environment**: each task gets exactly its own, as in a cold run; the
  supervisor's environment is the fixed base and carries nothing of a task;
- **the supervisor**: pid 1, so a task cannot signal it; non-dumpable, so a task
  cannot ptrace it or read its memory, environment or descriptors.

A sandbox is used again only when its task ended by itself (no limit crossed, no
kill, not withdrawn) and both scrubs reported clean; anything else closes it and
its volume. It is retired after ``max_uses`` tasks and when idle for ``idle_s``.
What a task can still learn of the ones before it in the same sandbox: the pid
counter (how many processes they started) and the volume's inode numbering.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phage.errors import PhageError, SandboxError
from phage.sandbox import supervisor
from phage.sandbox.base import SandboxLimits, SandboxOutcome, SandboxRequest
from phage.sandbox.bwrap import (
    WRAPPER_ENV,
    BwrapFds,
    BwrapSandbox,
    HostTools,
    cgroup_limits,
    host_tools,
    sandbox_env,
    wrapper_argv,
)
from phage.sandbox.cgroups import RunCgroup
from phage.sandbox.limits import LimitGuard
from phage.sandbox.process import Running, TailBuffer, supervise
from phage.sandbox.rootfs import SANDBOX_GID, SANDBOX_UID, grant_workspace, stage
from phage.sandbox.scratch import ScratchVolumes, make_workspace, remove_entries, remove_workspace
from phage.sandbox.seccomp import native_filter

log = logging.getLogger(__name__)

MAX_USES = 200
IDLE_S = 60.0
START_TIMEOUT_S = 20.0
MAX_MESSAGE = 128 * 1024
"""Largest run message (argv and environment) sent to a supervisor; larger runs go cold."""
SOURCE = Path(supervisor.__file__).read_text()


@dataclass(frozen=True, slots=True)
class WarmShape:
    """The limits fixed when a sandbox starts; a task uses a warm sandbox of its own shape only."""

    memory_bytes: int | None
    cpus: float | None
    pids: int | None
    scratch_bytes: int | None
    tmp_bytes: int

    @classmethod
    def of(cls, limits: SandboxLimits) -> WarmShape:
        return cls(limits.memory_bytes, limits.cpus, limits.pids, limits.scratch_bytes, limits.tmp_bytes)

    def limits(self) -> SandboxLimits:
        return SandboxLimits(
            memory_bytes=self.memory_bytes,
            cpus=self.cpus,
            pids=self.pids,
            scratch_bytes=self.scratch_bytes,
            tmp_bytes=self.tmp_bytes,
        )


def supervisor_python() -> str | None:
    """The interpreter the supervisor runs on: the system's, which the sandbox's ``/usr`` holds."""
    found = shutil.which("python3", path="/usr/bin")
    return os.path.realpath(found) if found is not None else None


def unavailable_reason() -> str | None:
    """None when warm sandboxes work here, else why not (the node then starts every run cold)."""
    reason = BwrapSandbox.unavailable_reason()
    if reason is not None:
        return reason
    if native_filter() is None:
        return "no seccomp filter for this architecture (POSIX message queues could outlive a task)"
    python = supervisor_python()
    if python is None or not python.startswith("/usr/"):
        return "no system python3 under /usr for the supervisor"
    return None


class WarmSandbox:
    """One live sandbox and its supervisor; the pool hands it to one task at a time."""

    def __init__(
        self,
        shape: WarmShape,
        workdir: Path,
        *,
        tools: HostTools,
        volumes: ScratchVolumes | None,
        proc: asyncio.subprocess.Process,
        sock: socket.socket,
        cgroup: RunCgroup | None,
    ) -> None:
        self.shape = shape
        self.workdir = workdir
        """The host directory (a scratch volume on a root node) bound at ``/workspace``."""
        self.uses = 0
        self.usable = True
        """False once anything went other than planned; it is then closed, never reused."""
        self.idle_since = 0.0
        self._tools = tools
        self._volumes = volumes
        self._proc = proc
        self._sock = sock
        self._cgroup = cgroup
        self._errors = TailBuffer(4096)
        self._stderr = asyncio.ensure_future(self._drain_stderr())

    @classmethod
    async def start(
        cls, shape: WarmShape, workdir: Path, *, tools: HostTools, volumes: ScratchVolumes | None
    ) -> WarmSandbox:
        """Make the workspace, the cgroup and the sandbox; return once its supervisor is ready."""
        python = supervisor_python()
        if python is None:
            raise SandboxError("no system python3 for a warm sandbox's supervisor")
        limits = shape.limits()
        await asyncio.to_thread(make_workspace, workdir, volumes, limits.scratch_bytes)
        cgroup: RunCgroup | None = None
        proc: asyncio.subprocess.Process | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if tools.privileged:
                await asyncio.to_thread(grant_workspace, workdir)
            cgroup = tools.cgroups.create(cgroup_limits(limits)) if tools.cgroups else None
            st = stage()
            argv = [python, "-I", "-S", "-c", SOURCE, str(theirs.fileno())]
            request = SandboxRequest(argv, workdir, limits=limits)
            fds = BwrapFds(request, st, str(st.mnt) if tools.privileged else str(workdir), as_pid_1=True)
            try:
                wrapper = wrapper_argv(request, tools=tools, stage=st, cgroup=cgroup, args_fd=fds.args_fd)
                proc = await asyncio.create_subprocess_exec(
                    *wrapper,
                    cwd="/",
                    env=dict(WRAPPER_ENV),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=(*fds.fds, theirs.fileno()),
                )
            finally:
                fds.close()
                theirs.close()
            ours.setblocking(False)
        except BaseException:
            ours.close()
            await _teardown(proc, cgroup)
            await asyncio.to_thread(remove_workspace, workdir, volumes)
            raise
        sandbox = cls(shape, workdir, tools=tools, volumes=volumes, proc=proc, sock=ours, cgroup=cgroup)
        try:
            reply = await asyncio.wait_for(sandbox._receive(), START_TIMEOUT_S)
        except BaseException:
            await sandbox.close()
            raise
        if reply != {"ready": True}:
            await asyncio.sleep(0.05)  # let the wrapper's last words arrive
            detail = sandbox._errors.text().strip()[-300:] or f"its supervisor answered {reply!r}"
            await sandbox.close()
            raise SandboxError(f"a warm sandbox did not start: {detail}")
        return sandbox

    async def _drain_stderr(self) -> None:
        stream = self._proc.stderr
        if stream is not None:
            while chunk := await stream.read(4096):
                self._errors.feed(chunk)

    async def _receive(self) -> dict[str, Any] | None:
        """The supervisor's next message; None when it is gone (or spoke nonsense)."""
        try:
            data = await asyncio.get_running_loop().sock_recv(self._sock, MAX_MESSAGE)
            reply = json.loads(data) if data else None
        except (OSError, ValueError):
            return None
        return reply if isinstance(reply, dict) else None

    def _kill(self) -> None:
        self.usable = False
        if self._cgroup is not None:
            self._cgroup.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, 9)

    def alive(self) -> bool:
        """Whether the sandbox's process still runs (an idle one can be killed from outside)."""
        return self.usable and self._proc.returncode is None

    def grant(self) -> None:
        """Hand what is in the workspace to the sandbox's uid (blocking; :meth:`run` does it
        unless told it is done)."""
        if self._tools.privileged:
            grant_workspace(self.workdir)

    async def run(self, request: SandboxRequest, *, granted: bool = False) -> SandboxOutcome:
        """Run one task (its workspace already in :attr:`workdir`); kill it all at the first limit."""
        if request.workdir != self.workdir or WarmShape.of(request.limits) != self.shape:
            raise SandboxError("a warm sandbox runs only tasks of its shape in its own workspace")
        env = sandbox_env(request)
        message = json.dumps({"op": "run", "argv": request.argv, "env": env}).encode()
        if len(message) > MAX_MESSAGE:
            raise SandboxError(f"the command and environment pass {MAX_MESSAGE} bytes", field="env")
        self.uses += 1
        self.usable = False  # until the task is seen to end by itself
        if self._tools.privileged and not granted:
            await asyncio.to_thread(grant_workspace, self.workdir)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        pipes = [os.pipe(), os.pipe()]
        transports: list[asyncio.BaseTransport] = []
        try:
            socket.send_fds(self._sock, [message], [pipes[0][1], pipes[1][1]])
            readers = []
            for read_fd, _ in pipes:
                reader = asyncio.StreamReader(loop=loop)
                transport, _ = await loop.connect_read_pipe(
                    lambda reader=reader: asyncio.StreamReaderProtocol(reader),  # type: ignore[misc]
                    os.fdopen(read_fd, "rb", buffering=0),
                )
                transports.append(transport)
                readers.append(reader)
        except BaseException:
            for read_fd, _ in pipes[len(transports) :]:
                os.close(read_fd)
            for opened in transports:
                opened.close()
            raise
        finally:
            for _, write_fd in pipes:
                os.close(write_fd)
        ended: list[bool] = []

        async def exited() -> int:
            reply = await self._receive()
            if reply is None or not isinstance(reply.get("exit"), int):
                return -1
            if reply.get("clean") is True:
                ended.append(True)
            else:
                log.warning("a warm sandbox will be closed: %s", reply.get("problem") or "no scrub")
            return int(reply["exit"])

        try:
            outcome = await supervise(
                Running(readers[0], readers[1], exited(), self._kill, sweep=lambda: None),
                started=started,
                wall_s=request.limits.wall_s,
                log_bytes=request.limits.log_bytes,
                output_bytes=request.limits.output_bytes,
                guard=LimitGuard(workdir=self.workdir, limits=request.limits, cgroup=self._cgroup),
            )
        finally:
            for opened in transports:
                opened.close()
        if outcome.exit_code == -1 and not outcome.killed_reason:
            self._kill()
            outcome = _ended_early(outcome, self._errors.text().strip()[-300:])
        self.usable = bool(ended) and not outcome.killed_reason
        return outcome

    async def reset(self) -> bool:
        """Empty the workspace for the next task (the supervisor scrubbed the rest as the task
        ended, and said so); True when the sandbox can be used again."""
        if not self.usable:
            return False
        problem = await asyncio.to_thread(_scrub_workdir, self.workdir, self._tools.privileged)
        if problem is not None:
            log.warning("a warm sandbox was closed instead of reused: %s", problem)
            self.usable = False
            return False
        return True

    async def close(self, *, keep_workdir: bool = False) -> None:
        """End the sandbox; remove its cgroup and (unless kept for its outputs) its workspace."""
        self.usable = False
        self._sock.close()
        self._kill()
        await _teardown(self._proc, self._cgroup)
        self._stderr.cancel()
        if not keep_workdir:
            await asyncio.to_thread(remove_workspace, self.workdir, self._volumes)


def _ended_early(outcome: SandboxOutcome, detail: str) -> SandboxOutcome:
    note = "\n[phage] the sandbox ended before its task did" + (f": {detail}" if detail else "") + "\n"
    return SandboxOutcome(
        exit_code=outcome.exit_code if outcome.exit_code >= 0 else 137,
        stdout_tail=outcome.stdout_tail,
        stderr_tail=outcome.stderr_tail + note,
        wall_s=outcome.wall_s,
    )


async def _teardown(proc: asyncio.subprocess.Process | None, cgroup: RunCgroup | None) -> None:
    if proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
    if cgroup is not None:
        await cgroup.remove()


def _scrub_workdir(workdir: Path, privileged: bool) -> str | None:
    """Empty the workspace and give its root back as it was made; what is wrong, if anything."""
    remove_entries(workdir)
    try:
        left = os.listdir(workdir)
        if left:
            return f"the workspace kept {len(left)} entries"
        for name in os.listxattr(workdir, follow_symlinks=False):
            os.removexattr(workdir, name, follow_symlinks=False)
        if privileged:
            os.chown(workdir, SANDBOX_UID, SANDBOX_GID)
        os.chmod(workdir, 0o700)
    except OSError as exc:
        return f"the workspace could not be reset: {exc}"
    return None


class WarmPool:
    """Warm sandboxes kept per shape, up to ``size`` idle at once.

    ``acquire`` hands out an idle sandbox of the task's shape (or starts one);
    ``release`` scrubs it in the background and keeps it if that came out clean.
    """

    def __init__(
        self,
        root: Path,
        volumes: ScratchVolumes | None,
        *,
        size: int,
        max_uses: int = MAX_USES,
        idle_s: float = IDLE_S,
    ) -> None:
        self.root = root
        self.size = size
        self.max_uses = max_uses
        self.idle_s = idle_s
        self._volumes = volumes
        self._idle: list[WarmSandbox] = []
        self._resetting: dict[asyncio.Task[None], WarmShape] = {}
        self._names = itertools.count()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def _tools(self) -> HostTools | None:
        tools = host_tools()
        return tools if isinstance(tools, HostTools) else None

    async def acquire(self, request: SandboxRequest) -> WarmSandbox | None:
        """A ready sandbox for a task like ``request`` (its workdir is ignored), or None: run it cold."""
        tools = self._tools()
        if self._closed or self.size <= 0 or tools is None:
            return None
        try:
            message = json.dumps({"argv": request.argv, "env": sandbox_env(request)})
        except PhageError:
            return None  # the cold run says what is wrong with it
        if len(message) > MAX_MESSAGE - 64:
            return None
        shape = WarmShape.of(request.limits)
        while True:
            found = self._take_idle(shape)
            if found is not None:
                return found
            pending = [task for task, s in self._resetting.items() if s == shape]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        return await self._start(shape, tools)

    def _take_idle(self, shape: WarmShape) -> WarmSandbox | None:
        """The most recently used idle sandbox of ``shape``; one that died while idle is closed."""
        for i in range(len(self._idle) - 1, -1, -1):
            if self._idle[i].shape == shape:
                found = self._idle.pop(i)
                if found.alive():
                    return found
                self.release(found, reuse=False)
        return None

    async def _start(self, shape: WarmShape, tools: HostTools) -> WarmSandbox | None:
        workdir = self.root / f"_warm-{os.getpid()}-{next(self._names)}"
        try:
            return await WarmSandbox.start(shape, workdir, tools=tools, volumes=self._volumes)
        except (SandboxError, OSError) as exc:
            log.warning("warm sandboxes are off on this node: %s", exc)
            self.size = 0
            return None

    def release(self, sandbox: WarmSandbox, *, reuse: bool, keep_workdir: bool = False) -> None:
        """Give a sandbox back: scrubbed and kept when ``reuse`` and all went well, else closed."""
        keep = reuse and not keep_workdir and sandbox.uses < self.max_uses and not self._closed
        task = asyncio.ensure_future(self._settle(sandbox, keep, keep_workdir))
        self._resetting[task] = sandbox.shape
        task.add_done_callback(self._resetting.pop)

    async def _settle(self, sandbox: WarmSandbox, keep: bool, keep_workdir: bool) -> None:
        try:
            if keep and len(self._idle) < self.size and await sandbox.reset() and not self._closed:
                self._keep(sandbox)
                return
            await sandbox.close(keep_workdir=keep_workdir)
        except BaseException:
            await asyncio.shield(sandbox.close(keep_workdir=keep_workdir))
            raise

    def _keep(self, sandbox: WarmSandbox) -> None:
        sandbox.idle_since = time.monotonic()
        self._idle.append(sandbox)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        """Close sandboxes idle for ``idle_s``; ends when none is left."""
        while self._idle:
            await asyncio.sleep(self.idle_s / 4)
            cutoff = time.monotonic() - self.idle_s
            stale = [s for s in self._idle if s.idle_since < cutoff]
            self._idle = [s for s in self._idle if s.idle_since >= cutoff]
            for sandbox in stale:
                await sandbox.close()

    async def prewarm(self, limits: SandboxLimits, count: int) -> None:
        """Start ``count`` sandboxes of ``limits``' shape and keep them idle."""
        tools = self._tools()
        if tools is None:
            return
        for _ in range(min(count, self.size - len(self._idle))):
            sandbox = await self._start(WarmShape.of(limits), tools)
            if sandbox is None:
                return
            if self._closed:
                await sandbox.close()
                return
            self._keep(sandbox)

    async def close(self) -> None:
        """Close every sandbox, idle or being scrubbed."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._resetting:
            await asyncio.gather(*self._resetting, return_exceptions=True)
        idle, self._idle = self._idle, []
        for sandbox in idle:
            await sandbox.close()
