"""Running a child process with a wall-clock limit and bounded log capture.

Shared by every backend: each builds its own argv (``bwrap …``, ``runsc …``,
or the bare command) and hands it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from phage.sandbox.base import SandboxOutcome

TIMEOUT_EXIT = 124


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


async def _drain(stream: asyncio.StreamReader | None, buf: TailBuffer) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        buf.feed(chunk)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: list[str], *, cwd: str, env: dict[str, str], wall_s: float, log_bytes: int
) -> SandboxOutcome:
    """Run ``argv`` in its own process group; kill the whole group at the wall-clock limit."""
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = TailBuffer(log_bytes), TailBuffer(log_bytes)
    readers = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), wall_s)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid)
        await proc.wait()
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        readers.cancel()
        raise
    # the leader is gone; stragglers in its group still hold the pipes
    _kill_group(proc.pid)
    try:
        await asyncio.wait_for(readers, 5)
    except TimeoutError:
        readers.cancel()
    code = proc.returncode if proc.returncode is not None else -1
    stderr = err.text()
    if timed_out:
        code = TIMEOUT_EXIT
        stderr += f"\n[phage] killed: wall-clock limit of {wall_s:g}s reached\n"
    return SandboxOutcome(
        exit_code=code,
        stdout_tail=out.text(),
        stderr_tail=stderr,
        wall_s=time.monotonic() - start,
        timed_out=timed_out,
        killed_reason="timeout" if timed_out else "",
    )
