"""Running a child process with a wall-clock limit, an output cap and bounded log capture.

Shared by every backend: each builds its own argv (``bwrap …``, ``runsc …``,
or the bare command) and hands it here, with a :class:`Guard` when it can
watch more limits from the host (cgroup events, scratch usage) and kill the
whole run rather than one process group.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from phage.sandbox.base import KillReason, SandboxOutcome

TIMEOUT_EXIT = 124
"""Exit code reported for a run stopped at its wall-clock limit (as coreutils ``timeout``)."""
KILLED_EXIT = 137
"""Exit code reported for a run killed at any other limit (128 + SIGKILL)."""
_READ = 65536


@dataclass(frozen=True, slots=True)
class Breach:
    """A limit a run crossed: the reason the outcome reports and a line for its stderr."""

    reason: KillReason
    message: str


class Guard(abc.ABC):
    """Watches one run's limits from the host and kills all of its processes."""

    @abc.abstractmethod
    async def breach(self) -> Breach:
        """Return once a limit is crossed (never, if none is); cancelled when the run ends."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process of the run, wherever it is in its process tree."""

    @abc.abstractmethod
    async def verdict(self, returncode: int) -> Breach | None:
        """After the run ended by itself: the limit that ended it, if one did."""


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        """Append, dropping from the front past the limit."""
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        """Decoded tail, with a note when bytes were dropped."""
        body = bytes(self.data).decode("utf-8", "replace")
        if self.total > self.limit:
            return f"[… {self.total - self.limit} earlier bytes dropped]\n{body}"
        return body


class _OutputCap:
    """Counts stdout and stderr together and trips once past the cap."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.total = 0
        self.tripped = asyncio.Event()

    def count(self, n: int) -> None:
        self.total += n
        if self.cap is not None and self.total > self.cap:
            self.tripped.set()


async def _drain(stream: asyncio.StreamReader | None, buf: TailBuffer, cap: _OutputCap) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_READ):
        cap.count(len(chunk))
        buf.feed(chunk)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    wall_s: float,
    log_bytes: int,
    output_bytes: int | None = None,
    guard: Guard | None = None,
    pass_fds: tuple[int, ...] = (),
) -> SandboxOutcome:
    """Run ``argv`` in its own process group; kill it all at the first limit it crosses.

    Limits: the wall clock, ``output_bytes`` of stdout and stderr together, and
    whatever ``guard`` watches. The outcome says which one ended the run.
    """
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        pass_fds=pass_fds,
    )

    def kill() -> None:
        _kill_group(proc.pid)
        if guard is not None:
            guard.kill()

    return await supervise(
        Running(proc.stdout, proc.stderr, proc.wait(), kill),
        started=start,
        wall_s=wall_s,
        log_bytes=log_bytes,
        output_bytes=output_bytes,
        guard=guard,
    )


@dataclass(slots=True)
class Running:
    """A started run as :func:`supervise` watches it: its two output streams, its end, its kill."""

    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None
    exited: Coroutine[Any, Any, int]
    """Returns the run's exit code once it has ended (-1 when that is not known)."""
    kill: Callable[[], None]
    """SIGKILL every process of the run."""
    sweep: Callable[[], None] | None = None
    """After the run ended by itself, for stragglers; ``kill`` when None (a warm sandbox's
    supervisor has ended them before it reports the end, and must itself live on)."""


async def supervise(
    run: Running,
    *,
    started: float,
    wall_s: float,
    log_bytes: int,
    output_bytes: int | None = None,
    guard: Guard | None = None,
) -> SandboxOutcome:
    """Watch a started run until it ends or crosses a limit (then kill it all); its outcome."""
    out, err = TailBuffer(log_bytes), TailBuffer(log_bytes)
    cap = _OutputCap(output_bytes)
    readers = asyncio.gather(_drain(run.stdout, out, cap), _drain(run.stderr, err, cap))
    exited = asyncio.ensure_future(run.exited)
    tripped = asyncio.ensure_future(cap.tripped.wait())
    watch = asyncio.ensure_future(guard.breach()) if guard is not None else None
    waiters = {exited, tripped} | ({watch} if watch is not None else set())
    breach: Breach | None = None
    try:
        done, _ = await asyncio.wait(waiters, timeout=wall_s, return_when=asyncio.FIRST_COMPLETED)
        if exited not in done:
            if watch is not None and watch in done:
                breach = watch.result()
            elif tripped in done:
                breach = Breach(KillReason.OUTPUT, f"output passed its cap of {output_bytes} bytes")
            else:
                breach = Breach(KillReason.TIMEOUT, f"wall-clock limit of {wall_s:g}s reached")
            run.kill()
            await exited
    except BaseException:  # cancelled (the task was withdrawn), or a broken guard: leave nothing running
        run.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(exited, 5)
        readers.cancel()
        raise
    finally:
        for waiter in (tripped, watch):
            if waiter is not None:
                waiter.cancel()
    # the leader is gone; stragglers (in its group, or anywhere in the run) still hold the pipes
    (run.sweep or run.kill)()
    try:
        await asyncio.wait_for(readers, 5)
    except TimeoutError:
        readers.cancel()
    code = exited.result()
    if breach is None and guard is not None:
        breach = await guard.verdict(code)
    if breach is None and cap.tripped.is_set():
        breach = Breach(KillReason.OUTPUT, f"output passed its cap of {output_bytes} bytes")
    stderr = err.text()
    if breach is not None:
        code = TIMEOUT_EXIT if breach.reason is KillReason.TIMEOUT else KILLED_EXIT
        stderr += f"\n[phage] killed: {breach.message}\n"
    return SandboxOutcome(
        exit_code=code,
        stdout_tail=out.text(),
        stderr_tail=stderr,
        wall_s=time.monotonic() - started,
        timed_out=breach is not None and breach.reason is KillReason.TIMEOUT,
        killed_reason=breach.reason.value if breach is not None else "",
    )
