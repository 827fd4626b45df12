"""run_process: the wall clock, the output cap and a guard's breaches end a run and say why."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from phage.sandbox.base import KillReason
from phage.sandbox.limits import nproc_args, scratch_usage, ulimit_script
from phage.sandbox.process import KILLED_EXIT, TIMEOUT_EXIT, Breach, Guard, run_process
from phage.sandbox.seccomp import SECCOMP_RET_ALLOW, deny_filter

ENV = {"PATH": "/usr/bin:/bin"}


class ScriptedGuard(Guard):
    """Breaches after ``after`` seconds, or reports a verdict after the run."""

    def __init__(self, after: float | None = None, verdict: Breach | None = None) -> None:
        self.after = after
        self._verdict = verdict
        self.killed = 0

    async def breach(self) -> Breach:
        if self.after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.after or 0)
        return Breach(KillReason.MEMORY, "memory limit reached")

    def kill(self) -> None:
        self.killed += 1

    async def verdict(self, returncode: int) -> Breach | None:
        return self._verdict


async def test_a_run_that_ends_by_itself_is_reported_as_is(tmp_path: Path) -> None:
    outcome = await run_process(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        cwd=str(tmp_path),
        env=ENV,
        wall_s=10,
        log_bytes=100,
    )
    assert (outcome.exit_code, outcome.stdout_tail, outcome.stderr_tail) == (3, "out\n", "err\n")
    assert outcome.killed_reason == "" and not outcome.timed_out


async def test_the_wall_clock_kills_the_whole_group(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = await run_process(
        ["/bin/sh", "-c", "sleep 30 & sleep 30"], cwd=str(tmp_path), env=ENV, wall_s=0.3, log_bytes=100
    )
    assert time.monotonic() - started < 5
    assert outcome.exit_code == TIMEOUT_EXIT and outcome.timed_out
    assert outcome.killed_reason == KillReason.TIMEOUT
    assert "wall-clock limit of 0.3s" in outcome.stderr_tail


async def test_output_past_the_cap_is_killed_not_truncated_forever(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = await run_process(
        ["/bin/sh", "-c", "head -c 1000000000 /dev/zero; echo done"],
        cwd=str(tmp_path),
        env=ENV,
        wall_s=60,
        log_bytes=1000,
        output_bytes=1 << 20,
    )
    assert time.monotonic() - started < 10
    assert outcome.killed_reason == KillReason.OUTPUT and outcome.exit_code == KILLED_EXIT
    assert "earlier bytes dropped" in outcome.stdout_tail and "done" not in outcome.stdout_tail
    assert f"output passed its cap of {1 << 20} bytes" in outcome.stderr_tail


async def test_a_guard_breach_kills_through_the_guard(tmp_path: Path) -> None:
    guard = ScriptedGuard(after=0.2)
    outcome = await run_process(
        ["/bin/sleep", "30"], cwd=str(tmp_path), env=ENV, wall_s=30, log_bytes=100, guard=guard
    )
    assert outcome.killed_reason == KillReason.MEMORY and outcome.exit_code == KILLED_EXIT
    assert guard.killed >= 1 and "memory limit reached" in outcome.stderr_tail


async def test_a_guard_verdict_after_exit_is_reported(tmp_path: Path) -> None:
    guard = ScriptedGuard(verdict=Breach(KillReason.SCRATCH, "scratch full"))
    outcome = await run_process(
        ["/bin/true"], cwd=str(tmp_path), env=ENV, wall_s=30, log_bytes=100, guard=guard
    )
    assert outcome.killed_reason == KillReason.SCRATCH and outcome.exit_code == KILLED_EXIT


def test_scratch_usage_counts_sizes_blocks_and_entries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big").write_bytes(b"x" * 100_000)
    (tmp_path / "empty").touch()
    (tmp_path / "link").symlink_to("/usr")
    used = scratch_usage(tmp_path)
    assert 100_000 + 3 * 4096 <= used < 100_000 + 6 * 4096
    assert scratch_usage(tmp_path, stop_at=1) > 1


def test_rlimits_in_posix_shell_units_and_fallbacks_only_where_asked() -> None:
    from phage.sandbox.base import SandboxLimits

    limits = SandboxLimits(memory_bytes=1 << 30, pids=50, scratch_bytes=1000)
    script = ulimit_script(limits, memory_rlimit=False)
    assert script == "ulimit -c 0 || exit 125; ulimit -n 4096 || exit 125; ulimit -f 2 || exit 125; "
    assert "ulimit -v 1048576" in ulimit_script(limits, memory_rlimit=True)
    assert nproc_args(limits) == ["--nproc=50"]


def test_seccomp_filter_is_well_formed() -> None:
    prog = deny_filter({"bpf": 321, "keyctl": 250})
    assert len(prog) % 8 == 0
    insns = [prog[i : i + 8] for i in range(0, len(prog), 8)]
    # load arch, check arch, deny, load nr, x32 check, two checks, allow, deny
    assert len(insns) == 9
    assert int.from_bytes(insns[-2][4:], "little") == SECCOMP_RET_ALLOW
    for index, insn in enumerate(insns[4:7], start=4):  # each check jumps to the last instruction
        assert index + 1 + insn[2] == len(insns) - 1


async def test_cancelling_a_run_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    run = asyncio.ensure_future(
        run_process(
            ["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"],
            cwd=str(tmp_path),
            env=ENV,
            wall_s=60,
            log_bytes=100,
        )
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
