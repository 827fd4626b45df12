"""Limits enforced around a run from the host: rlimits for its wrapper, and its guard.

The kernel enforces what it can on its own: cgroup limits (memory, processes,
CPU) and rlimits (file size, open files, no core dumps). The guard watches what
only the host can see — cgroup events, the scratch directory's size — and kills
the whole run at the first limit crossed, so a fork bomb or a disk filler ends at
once and is reported, instead of spinning against its limit until the wall clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

from phage.sandbox.base import KillReason, SandboxLimits
from phage.sandbox.cgroups import RunCgroup
from phage.sandbox.process import Breach, Guard
from phage.sandbox.scratch import is_volume, volume_full

EVENT_POLL_S = 0.05
"""How often the guard reads the run's cgroup events."""
SCRATCH_POLL_S = 0.2
"""Least interval between two walks of the scratch directory (more for large trees)."""
NOFILE = 4096
ENTRY_BYTES = 4096
"""The least an entry counts for: empty files still cost an inode and a directory slot."""
_FSIZE_SIGNALLED = {128 + signal.SIGXFSZ, -signal.SIGXFSZ}


def scratch_usage(root: Path, stop_at: int | None = None) -> int:
    """Disk the tree under ``root`` uses: per entry, the largest of its size, its blocks and 4 KiB.

    Symlinks are counted, never followed. Stops early once past ``stop_at``.
    """
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += max(st.st_size, st.st_blocks * 512, ENTRY_BYTES)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    if stop_at is not None and total > stop_at:
                        return total
        except OSError:
            continue
    return total


def ulimit_script(limits: SandboxLimits, *, memory_rlimit: bool) -> str:
    """Shell ``ulimit`` lines for a run: file size, open files, no core; address space as a fallback.

    Builtins of the wrapper shell, so setting them costs no exec. Only the options
    POSIX ``sh`` (dash, bash as ``sh``) agree on: ``-f`` and ``-c`` in 512-byte
    blocks, ``-n`` a count, ``-v`` KiB. RLIMIT_AS stands in for the memory cgroup
    only where there is none: it bounds address space, not memory, and breaks
    programs that reserve much (JITs, CUDA).
    """
    lines = ["ulimit -c 0", f"ulimit -n {NOFILE}"]
    if limits.scratch_bytes is not None:
        lines.append(f"ulimit -f {-(-limits.scratch_bytes // 512)}")
    if memory_rlimit and limits.memory_bytes is not None:
        lines.append(f"ulimit -v {max(1, limits.memory_bytes // 1024)}")
    return "".join(f"{line} || exit 125; " for line in lines)


def nproc_args(limits: SandboxLimits) -> list[str]:
    """``prlimit`` options standing in for the pids cgroup where there is none.

    RLIMIT_NPROC counts every process of the (unprivileged) uid on the machine,
    not just this run's, and shells disagree on its ``ulimit`` letter.
    """
    return [] if limits.pids is None else [f"--nproc={limits.pids}"]


class LimitGuard(Guard):
    """Watches one run's cgroup events and scratch size; kills through its cgroup."""

    def __init__(self, *, workdir: Path, limits: SandboxLimits, cgroup: RunCgroup | None) -> None:
        self.workdir = workdir
        self.limits = limits
        self.cgroup = cgroup

    def _event(self) -> Breach | None:
        if self.cgroup is None:
            return None
        if self.cgroup.oom_kills():
            return Breach(
                KillReason.MEMORY, f"memory limit of {self.limits.memory_bytes} bytes reached (out of memory)"
            )
        if self.cgroup.pid_limit_hits():
            return Breach(
                KillReason.PIDS, f"process limit of {self.limits.pids} reached (a fork was refused)"
            )
        return None

    async def _scratch(self) -> Breach | None:
        cap = self.limits.scratch_bytes
        if cap is None:
            return None
        if is_volume(self.workdir):  # the kernel holds the cap; only say when it was reached
            if volume_full(self.workdir):
                return Breach(KillReason.SCRATCH, f"scratch space reached its cap of {cap} bytes")
            return None
        used = await asyncio.to_thread(scratch_usage, self.workdir, cap)
        if used >= cap:
            return Breach(KillReason.SCRATCH, f"scratch space reached its cap of {cap} bytes")
        return None

    async def breach(self) -> Breach:
        """Poll cgroup events every 50 ms and the scratch size every 0.2 s or more."""
        next_walk = time.monotonic() + SCRATCH_POLL_S
        while True:
            await asyncio.sleep(EVENT_POLL_S)
            found = self._event()
            if found is None and time.monotonic() >= next_walk:
                started = time.monotonic()
                found = await self._scratch()
                spent = time.monotonic() - started
                next_walk = time.monotonic() + max(SCRATCH_POLL_S, 10 * spent)
            if found is not None:
                return found

    def kill(self) -> None:
        """SIGKILL everything in the run's cgroup."""
        if self.cgroup is not None:
            self.cgroup.kill()

    async def verdict(self, returncode: int) -> Breach | None:
        """Events, a file-size signal, or a scratch directory found over its cap after the run."""
        found = self._event()
        if found is None and returncode in _FSIZE_SIGNALLED and self.limits.scratch_bytes is not None:
            found = Breach(
                KillReason.SCRATCH, f"a file reached the scratch cap of {self.limits.scratch_bytes} bytes"
            )
        return found or await self._scratch()
