"""Validating untrusted results: what quorum costs, and what gets through, with lying nodes in the pool.

An open pool (``PHAGE_ADMISSION=open``: every node untrusted) of real ``phage node`` processes,
some of which return wrong outputs for every job (the fault-injection hook
``PHAGE_TEST_CORRUPT_OUTPUTS=1``, ``src/phage/node/faults.py``: each liar runs the job, then
replaces its outputs with other bytes and hashes, uploads and signs them like an honest node).
Cheap jobs (a shell script writing its argument to ``out/result.txt``) are submitted at once,
and each run counts, once every job is final:

* **completed**: jobs ``verified``; **failed**: jobs that never reached a quorum;
* **wrong accepted**: verified jobs whose accepted output is not the right one (its sha256 is
  checked against the known answer) — the number that must be 0;
* **executions**: every copy dispatched to a node (lost and refused ones included), and the
  **extra-execution ratio** = (executions − jobs) / jobs;
* liars quarantined, honest nodes quarantined (must be 0), and the wall time.

Two policies run side by side in the same invocation, on the same pool shape:

* **adaptive** (phage's defaults): one copy first; an untrusted node's result needs a second,
  agreeing opinion until the node has ``PHAGE_RELIABLE_AFTER`` consecutive validated results,
  after which it is accepted alone except for ``PHAGE_SPOT_CHECK`` random checks;
* **fixed 2-of-2**: every job dispatched twice at once to distinct nodes
  (``PHAGE_TARGET_RESULTS=2``), a third copy on disagreement, no single execution ever
  (``PHAGE_RELIABLE_AFTER=0``).

    .venv/bin/python bench/trust.py            # 10 nodes; 10 %, 20 %, 30 % liars; 1,000 jobs per run
    .venv/bin/python bench/trust.py --quick    # 20 % liars only, 300 jobs (~40 s)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import clean_nan, keep_logs, machine_info, tempdir, wait_for_quiet, write_results

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

console = Console(width=max(150, shutil.get_terminal_size((150, 40)).columns))

POLICIES: dict[str, dict[str, str]] = {
    "adaptive": {"PHAGE_TARGET_RESULTS": "1"},
    "fixed 2-of-2": {"PHAGE_TARGET_RESULTS": "2", "PHAGE_RELIABLE_AFTER": "0"},
}
SCRIPT = "mkdir -p out\nprintf '%s' \"$1\" > out/result.txt\n"


@dataclass
class Run:
    """One measured run: one policy, one share of lying nodes."""

    policy: str
    bad_share: float
    nodes: int
    liars: int
    jobs: int
    verified: int = 0
    failed: int = 0
    wrong_accepted: int = 0
    executions: int = 0
    """Copies dispatched to nodes, every one (lost and refused ones too)."""
    completed_executions: int = 0
    """Copies that reported a result."""
    liar_executions: int = 0
    liars_quarantined: int = 0
    honest_quarantined: int = 0
    wall_s: float = 0.0
    failure_reasons: list[str] | None = None

    @property
    def extra_ratio(self) -> float:
        """(executions − jobs) / jobs."""
        return (self.executions - self.jobs) / self.jobs

    def to_json(self) -> dict[str, Any]:
        """The run with its derived figures."""
        return {**asdict(self), "extra_ratio": round(self.extra_ratio, 4)}


def _job(value: str, max_attempts: int | None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "kind": "job",
        "files": {"run.sh": SCRIPT},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "args": [value], "outputs": ["out/*.txt"]},
    }
    if max_attempts is not None:
        task["max_attempts"] = max_attempts
    return task


def _expected(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _tally(run: Run, db: Path, values: dict[str, str], liar_ids: set[str]) -> None:
    """Read the outcome straight from the coordinator's database (exact, and faster than the API)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        reasons: list[str] = []
        for tid, state, result, error in conn.execute("SELECT id, state, result, error FROM tasks"):
            if state == "verified":
                run.verified += 1
                outputs = json.loads(result)["outputs"] if result else []
                if [o["sha256"] for o in outputs] != [_expected(values[tid])]:
                    run.wrong_accepted += 1
            elif state == "failed":
                run.failed += 1
                reasons.append(error[:300])
        run.failure_reasons = reasons[:5]
        for node_id, state in conn.execute("SELECT node_id, state FROM attempts"):
            run.executions += 1
            run.completed_executions += state in ("succeeded", "failed")
            run.liar_executions += node_id in liar_ids
        for node_id, quarantined in conn.execute("SELECT id, quarantined FROM nodes"):
            if quarantined:
                if node_id in liar_ids:
                    run.liars_quarantined += 1
                else:
                    run.honest_quarantined += 1


def run_once(args: argparse.Namespace, policy: str, bad: float) -> Run:
    """A fresh coordinator and pool; ``args.jobs`` jobs; the tally."""
    liars = round(bad * args.nodes)
    run = Run(policy, bad, args.nodes, liars, args.jobs)
    env = {
        "PHAGE_ADMISSION": "open",
        "PHAGE_MIN_QUORUM": "2",
        "PHAGE_RELIABLE_AFTER": str(args.reliable_after),
        "PHAGE_SPOT_CHECK": str(args.spot_check),
        **POLICIES[policy],
    }
    label = f"{policy.replace(' ', '')}-{int(bad * 100)}"
    with tempdir("phage-bench-trust-") as tmp:
        coord = CoordinatorProcess(tmp / "coordinator", heartbeat_s=args.heartbeat, env=env)
        nodes: list[NodeProcess] = []
        try:
            coord.start()
            # liars spread through the pool rather than first in line for work
            liar_slots = {round(i * args.nodes / liars) for i in range(liars)} if liars else set()
            for i in range(args.nodes):
                lie = {"PHAGE_TEST_CORRUPT_OUTPUTS": "1"} if i in liar_slots else {}
                node = NodeProcess(
                    coord,
                    tmp / f"node-{i}",
                    name=f"{'liar' if lie else 'honest'}-{i}",
                    concurrency=args.concurrency,
                    heartbeat_s=args.heartbeat,
                    env=lie,
                )
                nodes.append(node.start())
            wait_online(coord, args.nodes, timeout=60)
            liar_ids = {n.node_id for i, n in enumerate(nodes) if i in liar_slots}
            values: dict[str, str] = {}
            with coord.client() as c:
                started = time.monotonic()
                for lo in range(0, args.jobs, args.batch):
                    batch = [f"v-{i}" for i in range(lo, min(lo + args.batch, args.jobs))]
                    resp = c.post("/api/tasks", json={"tasks": [_job(v, args.max_attempts) for v in batch]})
                    resp.raise_for_status()
                    values.update({t["id"]: v for t, v in zip(resp.json()["tasks"], batch, strict=True)})

                def final() -> bool:
                    counts = c.get("/api/status").json()["tasks"]
                    return sum(counts.get(s, 0) for s in ("verified", "failed", "cancelled")) >= args.jobs

                wait_until(final, args.timeout, interval=0.1, what=f"{args.jobs} jobs final")
                run.wall_s = round(time.monotonic() - started, 2)
            _tally(run, coord.data_dir / "phage.db", values, liar_ids)
        except Exception:
            keep_logs(tmp, f"trust-{label}", lambda text: console.print(f"[red]{text}[/]"))
            raise
        finally:
            for node in nodes:
                node.stop()
            coord.stop()
    return run


def print_table(runs: list[Run]) -> None:
    """Policies side by side per share of liars."""
    table = Table(title="untrusted job results: quorum on the output hash (open pool)")
    for col in (
        "liars",
        "policy",
        "jobs",
        "completed",
        "failed",
        "wrong accepted",
        "executions",
        "extra",
        "liars quarantined",
        "honest quarantined",
        "wall s",
    ):
        table.add_column(col, justify="right" if col not in ("policy",) else "left")
    for r in runs:
        table.add_row(
            f"{r.liars}/{r.nodes} ({r.bad_share:.0%})",
            r.policy,
            f"{r.jobs:,}",
            f"{r.verified:,}",
            str(r.failed),
            f"[bold {'green' if r.wrong_accepted == 0 else 'red'}]{r.wrong_accepted}[/]",
            f"{r.executions:,}",
            f"{r.extra_ratio:.1%}",
            f"{r.liars_quarantined}/{r.liars}",
            str(r.honest_quarantined),
            f"{r.wall_s:.1f}",
        )
    console.print(table)


def markdown(runs: list[Run]) -> str:
    """The table in Markdown, for BENCHMARKS.md."""
    lines = [
        "| liars | policy | jobs | completed | failed | wrong accepted | executions | extra | "
        "liars quarantined | honest quarantined | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.liars}/{r.nodes} ({r.bad_share:.0%}) | {r.policy} | {r.jobs:,} | {r.verified:,} | "
            f"{r.failed} | {r.wrong_accepted} | {r.executions:,} | {r.extra_ratio:.1%} | "
            f"{r.liars_quarantined}/{r.liars} | {r.honest_quarantined} | {r.wall_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10, help="node processes per run")
    p.add_argument("--bad", default="0.1,0.2,0.3", help="shares of lying nodes, comma-separated")
    p.add_argument("--jobs", type=int, default=1000, help="jobs per run")
    p.add_argument("--policies", default=",".join(POLICIES), help="adaptive and/or 'fixed 2-of-2'")
    p.add_argument("--concurrency", type=int, default=2, help="jobs at once per node")
    p.add_argument("--reliable-after", type=int, default=10, help="PHAGE_RELIABLE_AFTER (adaptive)")
    p.add_argument("--spot-check", type=float, default=0.1, help="PHAGE_SPOT_CHECK (adaptive)")
    p.add_argument("--max-attempts", type=int, default=None, help="per job (default: the coordinator's)")
    p.add_argument("--batch", type=int, default=500, help="jobs per POST /api/tasks")
    p.add_argument("--heartbeat", type=float, default=2.0, help="heartbeat interval, seconds")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a run may take")
    p.add_argument("--quiet-threshold", type=float, default=25.0, help="wait until the machine is this idle")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a run that failed (lost processes)")
    p.add_argument("--quick", action="store_true", help="20 %% liars only, 300 jobs")
    args = p.parse_args(argv)
    if args.quick:
        args.bad, args.jobs = "0.2", 300
    args.bad_shares = [float(b) for b in args.bad.split(",") if b]
    args.policy_list = [s.strip() for s in args.policies.split(",") if s.strip()]
    unknown = [s for s in args.policy_list if s not in POLICIES]
    if unknown:
        p.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Every share of liars × every policy, then the table and the JSON."""
    args = parse_args(argv)
    started = time.time()
    machine = machine_info()
    console.print(
        f"[bold]bench/trust.py[/] on {machine['cpu_model']} ({machine['cores']} cores, "
        f"{machine['memory_gib']} GiB), {machine['os']}, Python {machine['python']}"
    )
    runs: list[Run] = []
    failures: list[dict[str, str]] = []
    for bad in args.bad_shares:
        for policy in args.policy_list:
            for attempt in range(1 + args.retries):
                wait_for_quiet(args.quiet_threshold, 60, console.print)
                console.print(f"· {policy}, {bad:.0%} liars, {args.jobs} jobs on {args.nodes} nodes …")
                try:
                    run = run_once(args, policy, bad)
                except Exception as exc:  # the machine is shared: a run can lose its processes
                    failures.append({"policy": policy, "bad": str(bad), "error": repr(exc)[:500]})
                    console.print(f"[red]  run failed ({exc!r:.200}); attempt {attempt + 1}[/]")
                    continue
                console.print(
                    f"  {run.verified}/{run.jobs} verified, {run.wrong_accepted} wrong accepted, "
                    f"{run.extra_ratio:.1%} extra, {run.wall_s:.1f} s"
                )
                runs.append(run)
                break
    print_table(runs)
    path = write_results(
        "trust",
        clean_nan(
            {
                "bench": "trust",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: v for k, v in vars(args).items()},
                "machine": machine,
                "wall_s": round(time.time() - started, 1),
                "runs": [r.to_json() for r in runs],
                "failures": failures,
            }
        ),
    )
    md = path.with_suffix(".md")
    md.write_text(markdown(runs))
    console.print(f"wrote {path} and {md.name}")
    console.print(f"total wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
