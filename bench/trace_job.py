"""Where one short job's time goes: submit, queue, dispatch, workspace, sandbox, outputs, report, settle.

One coordinator and one default node (``-v``: the node logs each task's phases at
debug level), one-line Python jobs submitted over HTTP one at a time. Each phase
is the median over the jobs, from three clocks on the one machine:

* the client: the ``POST /api/tasks`` round trip;
* the coordinator: the task's ``created_at``, the attempt's ``dispatched_at``,
  ``started_at`` (the node's ``StartTasks``) and ``finished_at``, the task's ``finished_at``;
* the node's log: unpacking the workspace, the sandbox run (start to exit, as
  the node's ``run_process`` sees it), collecting outputs, uploading them, and
  reporting (``SubmitResults`` until the coordinator's acknowledgement).

    .venv/bin/python bench/trace_job.py                     # default node, 30 jobs
    .venv/bin/python bench/trace_job.py --sandbox none --runs 50
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import fmt_ms, percentile, wait_for_quiet
from jobs import ENV, JOBS, FeedWaiter

from phage.testing import CoordinatorProcess, NodeProcess, wait_online

EXECUTOR = re.compile(r"(a-\w+): workspace ([\d.]+) ms, sandbox ([\d.]+) ms, outputs ([\d.]+) ms")
AGENT = re.compile(
    r"(a-\w+): waited for a slot ([\d.]+) ms, ran ([\d.]+) ms \(job ([\d.]+)\), "
    r"upload ([\d.]+) ms, report ([\d.]+) ms"
)


def trace(sandbox: str | None, job: str, runs: int, root: Path) -> list[dict[str, float]]:
    """One dict of phase → milliseconds per job."""
    coord = CoordinatorProcess(root / "coord", heartbeat_s=10.0).start()
    node = NodeProcess(
        coord, root / "node", concurrency=None, sandbox=sandbox, args=("-v",), env={"PATH": ENV["PATH"]}
    ).start()
    rows: dict[str, dict[str, float]] = {}
    try:
        wait_online(coord, 1, timeout=120)
        feed = FeedWaiter(coord)
        with coord.client() as client:
            for i in range(runs + 3):
                t0 = time.time()
                task = {"kind": "job", "files": {"main.py": JOBS[job]}, "manifest": {"entrypoint": "main.py"}}
                resp = client.post("/api/tasks", json=task)
                resp.raise_for_status()
                posted = time.time()

                done = feed.wait(client, resp.json()["id"])
                if i < 3:  # warm-up
                    continue
                (att,) = done["attempts"]
                rows[att["id"]] = {
                    "submit (HTTP round trip)": posted - t0,
                    "queued → dispatched": att["dispatched_at"] - done["created_at"],
                    "dispatched → StartTasks recorded": att["started_at"] - att["dispatched_at"],
                    "attempt finished → task verified": done["finished_at"] - att["finished_at"],
                    "total: submit → verified": done["finished_at"] - t0,
                }
        feed.close()
    finally:
        node.stop()
        coord.stop()
    log = (root / "node.log").read_text()
    for m in EXECUTOR.finditer(log):
        if m[1] in rows:
            row = rows[m[1]]
            row["node: unpack workspace"] = float(m[2]) / 1000
            row["node: sandbox run (start → exit)"] = float(m[3]) / 1000
            row["node: collect outputs"] = float(m[4]) / 1000
    for m in AGENT.finditer(log):
        if m[1] in rows:
            row = rows[m[1]]
            row["node: wait for a slot"] = float(m[2]) / 1000
            row["node: upload outputs"] = float(m[5]) / 1000
            row["node: report → acknowledged"] = float(m[6]) / 1000
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sandbox", default=None, help="node backend (default: the node's default)")
    parser.add_argument("--job", default="one-line", choices=list(JOBS))
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    busy = wait_for_quiet(max_wait_s=20)
    root = Path(tempfile.mkdtemp(prefix="phage-bench-trace-"))
    try:
        rows = trace(args.sandbox, args.job, args.runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"`python bench/trace_job.py {' '.join(sys.argv[1:])}` — machine {busy:.0f}% busy at the start")
    print("\n| phase | p50 ms | p90 ms |\n|---|---:|---:|")
    for phase in rows[0]:
        values = [r[phase] for r in rows if phase in r]
        print(
            f"| {phase} | {fmt_ms(percentile(values, 50) * 1000)} | {fmt_ms(percentile(values, 90) * 1000)} |"
        )


if __name__ == "__main__":
    main()
