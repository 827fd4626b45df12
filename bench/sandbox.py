"""Sandbox start-up: how long ``/bin/true`` (or ``--command``) takes from start to exit, per way to run it.

Every variant runs through the same harness (``phage.sandbox.process.run_process``:
an asyncio subprocess with piped stdout/stderr), in one process, interleaved
round by round so that whatever else the machine is doing weighs on all alike:

- ``plain``: the ``none`` backend — a bare subprocess in the workspace;
- ``bwrap (bare)``: bwrap with the same namespaces and binds but no cgroup, no
  rlimits and no privilege drop, for the cost of the limits below;
- ``bwrap (phage)``: ``BwrapSandbox.run`` exactly as a node runs a task — a cgroup
  made, joined and removed, the workspace handed to uid 65534, the
  ``unshare``/``mount``/``prlimit``/``setpriv`` wrapper, seccomp, the guard;
- ``gvisor (phage)``: ``GvisorSandbox.run`` — cgroup, OCI bundle, ``runsc run``;
- ``firejail``: ``firejail --quiet --noprofile --net=none /bin/true`` (Debian's
  package), for comparison with a common alternative.

The workspace sits where a node keeps it (``<key dir>/work/<id>``, key dir 0700).

    .venv/bin/python bench/sandbox.py               # 50 runs each
    .venv/bin/python bench/sandbox.py --runs 200 --markdown
    .venv/bin/python bench/sandbox.py --only "bwrap (phage)"   # without the others' wake
    .venv/bin/python bench/sandbox.py --command "/usr/bin/python3 -c pass"   # a real program's start
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import fmt_ms, machine_info, percentile, wait_for_quiet, write_results

from phage.sandbox.base import SandboxLimits, SandboxOutcome, SandboxRequest
from phage.sandbox.bwrap import BwrapSandbox, sandbox_env
from phage.sandbox.gvisor import GvisorSandbox
from phage.sandbox.none import NoneSandbox
from phage.sandbox.process import run_process
from phage.sandbox.rootfs import stage

Runner = Callable[[], Awaitable[SandboxOutcome]]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def _variants(workdir: Path, console: Console, command: list[str]) -> dict[str, Runner]:
    request = SandboxRequest(command, workdir, limits=SandboxLimits(wall_s=60))
    plain = NoneSandbox()
    variants: dict[str, Runner] = {"plain": lambda: plain.run(request)}
    bwrap = shutil.which("bwrap")
    if bwrap is not None:
        st = stage()
        bare = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
        bare += ["--uid", "65534", "--gid", "65534", "--ro-bind", "/usr", "/usr"]
        for entry in st.layout:
            bare += ["--symlink", entry.link, f"/{entry.name}"] if entry.link else []
        bare += ["--ro-bind", str(st.etc), "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        bare += ["--bind", str(workdir), "/workspace", "--chdir", "/workspace", "--remount-ro", "/"]
        bare += ["--clearenv"] + [a for k, v in sandbox_env(request).items() for a in ("--setenv", k, v)]
        bare += ["--", *command]
        variants["bwrap (bare)"] = lambda: run_process(bare, cwd="/", env=ENV, wall_s=60, log_bytes=4096)
    for name, cls in (("bwrap (phage)", BwrapSandbox), ("gvisor (phage)", GvisorSandbox)):
        reason = cls.unavailable_reason()
        if reason is None:
            sandbox = cls()
            variants[name] = lambda sandbox=sandbox: sandbox.run(request)  # type: ignore[misc]
        else:
            console.print(f"[yellow]{name}: skipped, {reason}[/]")
    firejail = shutil.which("firejail")
    if firejail is not None:
        argv = [firejail, "--quiet", "--noprofile", "--net=none", *command]
        variants["firejail"] = lambda: run_process(argv, cwd=str(workdir), env=ENV, wall_s=60, log_bytes=4096)
    else:
        console.print("[yellow]firejail: skipped, not installed (apt-get install firejail)[/]")
    return variants


async def measure(variants: dict[str, Runner], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per run of each variant, interleaved round by round."""
    for _ in range(warmup):
        for run in variants.values():
            await run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, run in variants.items():
            started = time.perf_counter()
            outcome = await run()
            elapsed = time.perf_counter() - started
            if outcome.exit_code != 0:
                raise RuntimeError(
                    f"{name}: the command exited {outcome.exit_code}: {outcome.stderr_tail[-500:]}"
                )
            times[name].append(elapsed)
    return times


def summarise(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """p50, p95, mean and the p50 over ``plain``'s, in milliseconds."""
    base = percentile(times["plain"], 50) * 1000
    rows = []
    for name, values in times.items():
        p50 = percentile(values, 50) * 1000
        rows.append(
            {
                "variant": name,
                "n": len(values),
                "p50_ms": p50,
                "p95_ms": percentile(values, 95) * 1000,
                "mean_ms": sum(values) / len(values) * 1000,
                "over_plain_p50_ms": p50 - base,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> Table:
    """The rich table of a summary."""
    t = Table(title="start to exit")
    for col in ("variant", "runs", "p50 ms", "p95 ms", "mean ms", "p50 over plain"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        t.add_row(
            r["variant"],
            str(r["n"]),
            fmt_ms(r["p50_ms"]),
            fmt_ms(r["p95_ms"]),
            fmt_ms(r["mean_ms"]),
            "-" if r["variant"] == "plain" else f"+{fmt_ms(r['over_plain_p50_ms'])}",
        )
    return t


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], command: str, busy: float) -> str:
    """The figures as a Markdown table, with the command and the machine."""
    lines = [
        f"`{command}` — {info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['os']}, kernel {info['kernel']}, {info.get('bwrap')}, {info.get('runsc')}, "
        f"{info.get('firejail')}; machine {busy:.0f}% busy with other work at the start.",
        "",
        "| variant | runs | p50 ms | p95 ms | mean ms | p50 over plain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        over = "-" if r["variant"] == "plain" else f"+{fmt_ms(r['over_plain_p50_ms'])}"
        lines.append(
            f"| {r['variant']} | {r['n']} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p95_ms'])} "
            f"| {fmt_ms(r['mean_ms'])} | {over} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--command", default="/bin/true", help="what each variant runs (default /bin/true)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--only", action="append", default=[], help="measure only these variants (and plain); repeatable"
    )
    args = parser.parse_args()
    console = Console()
    if os.geteuid() != 0:
        console.print("[yellow]not root: bwrap runs unprivileged and gvisor is unavailable[/]")
    busy = wait_for_quiet(say=console.print)
    root = Path(tempfile.mkdtemp(prefix="phage-bench-sandbox-"))
    try:
        key_dir = root / "node"
        workdir = key_dir / "work" / "a-1"
        workdir.mkdir(parents=True)
        key_dir.chmod(0o700)
        variants = _variants(workdir, console, shlex.split(args.command))
        if args.only:
            variants = {k: v for k, v in variants.items() if k == "plain" or k in args.only}
        times = asyncio.run(measure(variants, args.runs, args.warmup))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = summarise(times)
    console.print(table(rows))
    info = machine_info(
        {
            "bwrap": ["bwrap", "--version"],
            "runsc": ["runsc", "--version"],
            "firejail": ["firejail", "--version"],
        }
    )
    command = "python bench/sandbox.py " + " ".join(sys.argv[1:])
    path = write_results("sandbox", {"command": command, "machine": info, "busy_pct": busy, "rows": rows})
    console.print(f"results: {path}")
    if args.markdown:
        print(markdown(rows, info, command.strip(), busy))


if __name__ == "__main__":
    main()
