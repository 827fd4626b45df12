"""What a kernel-held scratch cap costs a job: a workspace as a plain directory vs its own volume.

Each variant makes a fresh workspace as the node's executor does, runs ``/bin/true``
in it through ``BwrapSandbox`` (as a node runs a task) and removes it, interleaved
round by round so that other load on the machine weighs on both alike:

- ``directory``: ``mkdir``, run, ``rmtree`` (the scratch cap only polled);
- ``volume``: a 1 GiB ext4 volume copied from its template and loop-mounted, run,
  lazily unmounted and deleted (the scratch cap held by the kernel).

    .venv/bin/python bench/scratch.py --runs 50 --markdown      # as root
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import fmt_ms, machine_info, percentile, wait_for_quiet, write_results

from phage.sandbox.base import SandboxLimits, SandboxRequest
from phage.sandbox.bwrap import BwrapSandbox
from phage.sandbox.scratch import ScratchVolumes

CAP = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    volumes = ScratchVolumes.detect()
    reason = BwrapSandbox.unavailable_reason()
    if isinstance(volumes, str) or reason is not None:
        sys.exit(f"needs root, loop devices and bwrap: {volumes if isinstance(volumes, str) else reason}")
    busy = wait_for_quiet()
    sandbox = BwrapSandbox()
    root = Path(tempfile.mkdtemp(prefix="phage-bench-scratch-"))
    root.chmod(0o700)

    def plain(work: Path) -> None:
        work.mkdir()

    def volume(work: Path) -> None:
        volumes.create(work, CAP)

    def remove_plain(work: Path) -> None:
        shutil.rmtree(work)

    variants: dict[str, tuple[Callable[[Path], None], Callable[[Path], None]]] = {
        "directory": (plain, remove_plain),
        "volume": (volume, volumes.release),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}

    async def one(make: Callable[[Path], None], remove: Callable[[Path], None], work: Path) -> float:
        started = time.perf_counter()
        await asyncio.to_thread(make, work)
        request = SandboxRequest(["/bin/true"], work, limits=SandboxLimits(wall_s=60, scratch_bytes=CAP))
        outcome = await sandbox.run(request)
        await asyncio.to_thread(remove, work)
        if outcome.exit_code != 0:
            raise RuntimeError(outcome.stderr_tail[-500:])
        return time.perf_counter() - started

    async def measure() -> None:
        for i in range(args.runs + 2):
            for name, (make, remove) in variants.items():
                elapsed = await one(make, remove, root / f"{name}-{i}")
                if i >= 2:  # the first two warm the stage, the template and the page cache
                    times[name].append(elapsed)

    try:
        asyncio.run(measure())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    base = percentile(times["directory"], 50) * 1000
    for name, values in times.items():
        p50 = percentile(values, 50) * 1000
        rows.append(
            {
                "variant": name,
                "n": len(values),
                "p50_ms": p50,
                "p95_ms": percentile(values, 95) * 1000,
                "ratio_p50": p50 / base,
            }
        )
    info = machine_info({"bwrap": ["bwrap", "--version"]})
    command = "python bench/scratch.py " + " ".join(sys.argv[1:])
    path = write_results("scratch", {"command": command, "machine": info, "busy_pct": busy, "rows": rows})
    for r in rows:
        p50, p95 = fmt_ms(r["p50_ms"]), fmt_ms(r["p95_ms"])
        print(f"{r['variant']:>10}: p50 {p50} ms, p95 {p95} ms, x{r['ratio_p50']:.2f}")
    print(f"results: {path}")
    if args.markdown:
        where = f"{info['cpu_model']}, {info['cores']} cores; {busy:.0f}% busy at the start"
        print(f"\n`{command.strip()}` — {where}.\n")
        print("| workspace | runs | p50 ms | p95 ms | p50 vs directory |\n|---|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['variant']} | {r['n']} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p95_ms'])} "
                f"| x{r['ratio_p50']:.2f} |"
            )


if __name__ == "__main__":
    main()
