"""Real short jobs end to end: submit over HTTP → verified, per sandbox backend, beside bare runners.

Two jobs, each a real ``python3 main.py`` in a fresh workspace:

* ``one-line``: ``main.py`` is ``pass`` — the cost of a job that does nothing but start Python;
* ``cpu-50ms``: ``main.py`` spins until it has used 50 ms of CPU.

For each node backend (``none``, ``bwrap``, ``gvisor`` and the node's *default*, no ``--sandbox``
and no ``--concurrency``: bwrap with warm sandboxes; ``default-cold`` is the same with
``--warm-sandboxes 0``, a fresh sandbox for every job): a real ``phage coordinator`` and
default ``phage node`` processes on loopback (gRPC over mTLS). Measured:

* one job at a time: ``POST /api/tasks`` → the task ``verified`` (the coordinator's own
  ``finished_at``, so the poll interval does not count), p50 / p99; beside it the job's process as the
  node timed it (``wall_time_s``) — the difference is phage's own share;
* jobs/s: a batch submitted in one request, from the request until the last ``finished_at``, with 1
  and 2 nodes.

Beside them, the same command run straight from this script (no coordinator, no node) three ways,
one at a time and 4 / 8 at once (the slots of 1 and 2 default nodes):

* ``plain``: a bare subprocess;
* ``bwrap (bare)``: bubblewrap with namespaces and binds but no limits, no cgroup, no seccomp;
* ``firejail``: Debian's ``firejail --quiet --noprofile --net=none`` (``apt-get install firejail``;
  not needed by phage or CI, only here).

    .venv/bin/python bench/jobs.py                 # everything (~4 minutes on 2 cores)
    .venv/bin/python bench/jobs.py --quick         # fewer jobs (~1.5 minutes)
    .venv/bin/python bench/jobs.py --backends default,none --job one-line --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import clean_nan, fmt_ms, machine_info, percentile, wait_for_quiet, write_results

from phage.sandbox.base import SandboxOutcome, SandboxRequest
from phage.sandbox.bwrap import sandbox_env
from phage.sandbox.process import run_process
from phage.sandbox.rootfs import stage
from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

console = Console(width=max(150, shutil.get_terminal_size((150, 40)).columns))

JOBS = {
    "one-line": "pass\n",
    "cpu-50ms": "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.05:\n    pass\n",
}
BACKENDS = ("default", "default-cold", "none", "bwrap", "gvisor")
FINAL = ("verified", "failed", "cancelled")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _task(job: str) -> dict[str, Any]:
    return {"kind": "job", "files": {"main.py": JOBS[job]}, "manifest": {"entrypoint": "main.py"}}


class FeedWaiter:
    """Waits for a task to end by listening to the coordinator's live feed (``WS /api/feed``).

    Polling ``GET /api/tasks/{id}`` every few milliseconds would load the coordinator
    while it handles the very job being timed; the feed pushes the one event instead.
    """

    def __init__(self, coord: CoordinatorProcess) -> None:
        url = coord.url.replace("http://", "ws://") + "/api/feed"
        connection = connect(url, additional_headers={"Authorization": f"Bearer {coord.admin_key}"})
        self.ws = connection.__enter__()  # closed by close()

    def wait(self, client: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
        """The task, fetched once the feed says it ended."""
        deadline = time.monotonic() + timeout
        while True:
            event = json.loads(self.ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if event.get("type") == "task" and event.get("id") == task_id and event.get("state") in FINAL:
                task: dict[str, Any] = client.get(f"/api/tasks/{task_id}").json()
                return task

    def close(self) -> None:
        """Hang up."""
        self.ws.close()


def serial(client: httpx.Client, coord: CoordinatorProcess, job: str, runs: int) -> dict[str, list[float]]:
    """Submit → verified, one job at a time; also the process's own time as the node measured it.

    The feed is opened for these runs only: left open through a bulk run it would fill with
    events nobody reads, and the coordinator's answers to its keep-alive pings would queue
    behind them until the connection is dropped."""
    e2e: list[float] = []
    process: list[float] = []
    feed = FeedWaiter(coord)
    try:
        return _serial(client, feed, job, runs, e2e, process)
    finally:
        feed.close()


def _serial(
    client: httpx.Client, feed: FeedWaiter, job: str, runs: int, e2e: list[float], process: list[float]
) -> dict[str, list[float]]:
    for _ in range(runs):
        t0 = time.time()
        resp = client.post("/api/tasks", json=_task(job))
        resp.raise_for_status()
        task = feed.wait(client, resp.json()["id"])
        if task["state"] != "verified":
            raise RuntimeError(f"{job}: task ended {task['state']}: {task.get('result')}")
        e2e.append(task["finished_at"] - t0)
        process.append(float(task["result"]["wall_time_s"]))
    return {"e2e": e2e, "process": process}


def throughput(client: httpx.Client, job: str, count: int) -> float:
    """Jobs per second: ``count`` jobs submitted in one request until the last is verified."""
    t0 = time.time()
    resp = client.post("/api/tasks", json={"tasks": [_task(job)] * count})
    resp.raise_for_status()
    ids = [t["id"] for t in resp.json()["tasks"]]

    def done() -> bool:
        counts: dict[str, int] = client.get("/api/status").json()["tasks"]
        return bool(sum(counts.get(s, 0) for s in FINAL) >= total)

    total = sum(client.get("/api/status").json()["tasks"].get(s, 0) for s in FINAL) + count
    wait_until(done, 300, interval=0.05, what=f"{count} {job} jobs")
    ends = []
    for tid in ids:
        task = client.get(f"/api/tasks/{tid}").json()
        if task["state"] != "verified":
            raise RuntimeError(f"{job}: task ended {task['state']}: {task.get('result')}")
        ends.append(task["finished_at"])
    return float(count / (max(ends) - t0))


def _node(
    coord: CoordinatorProcess, key_dir: Path, name: str, sandbox: str | None, *, cold: bool = False
) -> NodeProcess:
    """A default node (no ``--concurrency``), with the system's PATH: ``python3`` is the same
    ``/usr/bin/python3`` for the ``none`` backend as inside the sandboxes."""
    env = {"PATH": ENV["PATH"]} | ({"PHAGE_NODE_WARM_SANDBOXES": "0"} if cold else {})
    return NodeProcess(coord, key_dir, name=name, concurrency=None, sandbox=sandbox, env=env).start()


def run_backend(args: argparse.Namespace, backend: str, root: Path) -> list[dict[str, Any]]:
    """Coordinator + default nodes of one backend: every job, serially and in bulk on 1 and 2 nodes."""
    sandbox = None if backend in ("default", "default-cold") else backend
    cold = backend == "default-cold"
    coord = CoordinatorProcess(root / f"coord-{backend}", heartbeat_s=10.0)
    nodes: list[NodeProcess] = []
    rows = []
    try:
        coord.start()
        nodes.append(_node(coord, root / f"{backend}-n0", "n0", sandbox, cold=cold))
        wait_online(coord, 1, timeout=120)
        with coord.client() as client:
            for job in args.job:
                serial(client, coord, job, args.warmup)
                times = serial(client, coord, job, args.serial)
                one = throughput(client, job, args.bulk)
                rows.append(
                    {
                        "backend": backend,
                        "job": job,
                        **_lat(times),
                        "jobs_s_1": one,
                        "load": os.getloadavg()[0],
                    }
                )
            nodes.append(_node(coord, root / f"{backend}-n1", "n1", sandbox, cold=cold))
            wait_online(coord, 2, timeout=120)
            for row in rows:
                serial(client, coord, row["job"], args.warmup)
                row["jobs_s_2"] = throughput(client, row["job"], 2 * args.bulk)
        head = " ".join((root / f"{backend}-n0.log").read_text().split())  # rich wraps long lines
        at = head.find("· sandbox")
        line = head[at : head.find("· coordinator", at)].strip(" ·") if at >= 0 else ""
        for row in rows:
            row["node_line"] = line
        return rows
    except BaseException:
        for log in root.glob("*.log"):
            console.print(f"[red]{log.name}[/]\n" + log.read_text()[-2000:])
        raise
    finally:
        for n in nodes:
            n.stop()
        coord.stop()


def _lat(times: dict[str, list[float]]) -> dict[str, Any]:
    e2e, proc = times["e2e"], times["process"]
    share = [a - b for a, b in zip(e2e, proc, strict=True)]
    return {
        "n": len(e2e),
        "p50_ms": percentile(e2e, 50) * 1000,
        "p99_ms": percentile(e2e, 99) * 1000,
        "process_p50_ms": percentile(proc, 50) * 1000,
        "share_p50_ms": percentile(share, 50) * 1000,
    }


# ---- the same command without phage --------------------------------------------------------------

Runner = Callable[[Path], Awaitable[SandboxOutcome]]


def _runners() -> dict[str, Runner]:
    argv = ["python3", "main.py"]

    async def plain(work: Path) -> SandboxOutcome:
        return await run_process(argv, cwd=str(work), env=ENV, wall_s=60, log_bytes=4096)

    runners: dict[str, Runner] = {"plain": plain}
    bwrap = shutil.which("bwrap")
    if bwrap is not None:
        st = stage()
        env = sandbox_env(SandboxRequest(argv, Path("/")))

        async def bare(work: Path) -> SandboxOutcome:
            cmd = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
            cmd += ["--uid", "65534", "--gid", "65534", "--ro-bind", "/usr", "/usr"]
            for entry in st.layout:
                cmd += ["--symlink", entry.link, f"/{entry.name}"] if entry.link else []
            cmd += ["--ro-bind", str(st.etc), "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
            cmd += ["--bind", str(work), "/workspace", "--chdir", "/workspace", "--remount-ro", "/"]
            cmd += ["--clearenv"] + [a for k, v in env.items() for a in ("--setenv", k, v)]
            return await run_process([*cmd, "--", *argv], cwd="/", env=ENV, wall_s=60, log_bytes=4096)

        runners["bwrap (bare)"] = bare
    firejail = shutil.which("firejail")
    if firejail is not None:
        fj = [firejail, "--quiet", "--noprofile", "--net=none", *argv]

        async def jail(work: Path) -> SandboxOutcome:
            return await run_process(fj, cwd=str(work), env=ENV, wall_s=60, log_bytes=4096)

        runners["firejail"] = jail
    else:
        console.print("[yellow]firejail: skipped, not installed (apt-get install firejail)[/]")
    return runners


async def _bare(run: Runner, job: str, root: Path, runs: int, parallel: int) -> list[float]:
    """Seconds per run (each in a fresh workspace), ``parallel`` at a time; returns per-run times."""
    sem = asyncio.Semaphore(parallel)
    times: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            work = root / f"w{i}"
            work.mkdir(mode=0o777)
            (work / "main.py").write_text(JOBS[job])
            t0 = time.perf_counter()
            outcome = await run(work)
            times.append(time.perf_counter() - t0)
            if outcome.exit_code != 0:
                raise RuntimeError(f"exit {outcome.exit_code}: {outcome.stderr_tail[-400:]}")
            shutil.rmtree(work)

    await asyncio.gather(*(one(i) for i in range(runs)))
    return times


def run_bare(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """The same command through each bare runner: one at a time, then 4 and 8 at once."""
    rows = []
    for name, run in _runners().items():
        for job in args.job:
            asyncio.run(_bare(run, job, root, args.warmup, 1))
            lat = asyncio.run(_bare(run, job, root, args.serial, 1))
            rates = {}
            for parallel, key in ((4, "jobs_s_1"), (8, "jobs_s_2")):
                count = args.bulk * parallel // 4
                t0 = time.perf_counter()
                asyncio.run(_bare(run, job, root, count, parallel))
                rates[key] = count / (time.perf_counter() - t0)
            rows.append(
                {
                    "backend": name,
                    "job": job,
                    "n": len(lat),
                    "p50_ms": percentile(lat, 50) * 1000,
                    "p99_ms": percentile(lat, 99) * 1000,
                    "process_p50_ms": percentile(lat, 50) * 1000,
                    "share_p50_ms": 0.0,
                    **rates,
                    "load": os.getloadavg()[0],
                }
            )
    return rows


# ---- report ----------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> Table:
    """The rich table."""
    t = Table(title="python3 main.py: submit → verified (phage) or start → exit (bare runners)")
    cols = ("runner", "job", "p50 ms", "p99 ms", "process p50", "phage's share p50", "jobs/s ×1", "jobs/s ×2")
    for col in cols:
        t.add_column(col, justify="left" if col in ("runner", "job") else "right")
    for r in rows:
        t.add_row(
            r["backend"],
            r["job"],
            fmt_ms(r["p50_ms"]),
            fmt_ms(r["p99_ms"]),
            fmt_ms(r["process_p50_ms"]),
            fmt_ms(r["share_p50_ms"]),
            f"{r['jobs_s_1']:.1f}",
            f"{r.get('jobs_s_2', float('nan')):.1f}",
        )
    return t


def markdown(rows: list[dict[str, Any]], command: str, busy: float, info: dict[str, Any]) -> str:
    """The figures as Markdown, with the command and the machine."""
    none = {r["job"]: r for r in rows if r["backend"] == "none"}
    lines = [
        f"`{command}` — {info['cpu_model']}, {info['cores']} cores, {info['os']}, kernel {info['kernel']}, "
        f"{info.get('bwrap')}, {info.get('runsc')}, {info.get('firejail')}; machine {busy:.0f}% busy "
        "with other work at the start; load avg: the machine's 1-minute load average (2 cores) "
        "after each row.",
        "",
        "| runner | job | p50 ms | p99 ms | process p50 ms | phage's share p50 ms "
        "| jobs/s, 1 node | jobs/s, 2 nodes | jobs/s ÷ `none` (1 node) | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = none.get(r["job"])
        ratio = f"{r['jobs_s_1'] / base['jobs_s_1']:.2f}" if base else "-"
        lines.append(
            f"| {r['backend']} | {r['job']} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} "
            f"| {fmt_ms(r['process_p50_ms'])} | {fmt_ms(r['share_p50_ms'])} | {r['jobs_s_1']:.1f} "
            f"| {r.get('jobs_s_2', float('nan')):.1f} | {ratio} | {r.get('load', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="node backends, comma-separated")
    parser.add_argument("--job", action="append", choices=list(JOBS), help="repeatable; default: both")
    parser.add_argument("--serial", type=int, default=40, help="jobs run one at a time, per job")
    parser.add_argument("--bulk", type=int, default=60, help="jobs per node in the throughput runs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-bare", action="store_true", help="skip the runners without phage")
    parser.add_argument("--quick", action="store_true", help="20 serial and 30 bulk jobs per node")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    args.job = args.job or list(JOBS)
    if args.quick:
        args.serial, args.bulk = 20, 30
    busy = wait_for_quiet(max_wait_s=20, say=console.print)
    root = Path(tempfile.mkdtemp(prefix="phage-bench-jobs-"))
    rows: list[dict[str, Any]] = []
    try:
        for backend in args.backends.split(","):
            rows += run_backend(args, backend, root)
        if not args.no_bare:
            bare = root / "bare"
            bare.mkdir(mode=0o755)
            rows += run_bare(args, bare)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    console.print(table(rows))
    for r in rows:
        if r.get("node_line"):
            console.print(f"{r['backend']}: {r['node_line']}")
    info = machine_info(
        {
            "bwrap": ["bwrap", "--version"],
            "runsc": ["runsc", "--version"],
            "firejail": ["firejail", "--version"],
        }
    )
    command = "python bench/jobs.py " + " ".join(sys.argv[1:])
    path = write_results(
        "jobs", clean_nan({"command": command, "machine": info, "busy_pct": busy, "rows": rows})
    )
    console.print(f"results: {path}")
    if args.markdown:
        print(markdown(rows, command.strip(), busy, info))


if __name__ == "__main__":
    main()
