"""What every run of ``bench/dispatch.py`` shares: the result record, CPU accounting, and phage's HTTP side.

Apart from the drivers so that the SQLite runs (``dispatch.py``) and the
PostgreSQL runs (``dispatch_pg.py``) measure phage the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _util import busy_cpu_seconds, latency_summary
from _util import keep_logs as _keep_logs
from _util import tempdir as tempdir
from rich.console import Console

console = Console(width=max(170, shutil.get_terminal_size((170, 40)).columns))

FINAL = ("verified", "failed", "cancelled")


@dataclass
class RunResult:
    """One measured run of one system."""

    system: str
    config: str
    jobs: int
    seconds: float
    enqueue_seconds: float
    failed: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    dispatch_loaded: dict[str, float] = field(default_factory=dict)
    dispatch_idle: dict[str, float] = field(default_factory=dict)
    e2e_loaded: dict[str, float] = field(default_factory=dict)
    background_pct: float = 0.0
    """CPU share (of the whole machine) other processes used during the window."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Jobs per second over the whole window."""
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    @property
    def key(self) -> tuple[str, str]:
        """Which row of the table this run belongs to."""
        return self.system, self.config

    def to_json(self) -> dict[str, Any]:
        """Everything, for the results file."""
        return {
            "system": self.system,
            "config": self.config,
            "jobs": self.jobs,
            "seconds": self.seconds,
            "jobs_per_s": self.rate,
            "enqueue_seconds": self.enqueue_seconds,
            "enqueue_per_s": self.jobs / self.enqueue_seconds if self.enqueue_seconds > 0 else None,
            "failed": self.failed,
            "cpu_s": self.cpu_s,
            "cpu_ms_per_job": 1000 * sum(self.cpu_s.values()) / self.jobs if self.jobs else None,
            "dispatch_latency_loaded": self.dispatch_loaded,
            "dispatch_latency_idle": self.dispatch_idle,
            "e2e_latency_loaded": self.e2e_loaded,
            "background_cpu_pct": self.background_pct,
            **self.extra,
        }


# ---- CPU accounting --------------------------------------------------------------------------


class CpuMeter:
    """User+system CPU seconds of named processes (and their children) over a window."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.start = self._sample()
        self.machine_start = busy_cpu_seconds()
        self.t0 = time.monotonic()
        self.background_pct = 0.0
        """Share of the machine's CPU spent by other processes during the window."""

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        total = 0.0
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    ct = child.cpu_times()
                    total += ct.user + ct.system
        return total

    def _sample(self) -> dict[str, float]:
        out = {name: self._cpu(p) for name, p in self.procs.items()}
        me = psutil.Process().cpu_times()
        out["bench client"] = me.user + me.system
        return out

    def stop(self) -> dict[str, float]:
        """CPU seconds spent by each since the meter was made."""
        end = self._sample()
        ours = {name: round(end[name] - self.start.get(name, 0.0), 3) for name in end}
        elapsed = time.monotonic() - self.t0
        others = busy_cpu_seconds() - self.machine_start - sum(ours.values())
        self.background_pct = round(max(0.0, 100 * others / (elapsed * (os.cpu_count() or 1))), 1)
        return ours


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def keep_logs(tmp: Path, label: str) -> None:
    """The shared copy of a failed run's logs (``_util.keep_logs``), said in red."""
    _keep_logs(tmp, label, lambda text: console.print(f"[red]{text}[/]"))


# ---- phage -----------------------------------------------------------------------------------


def _submit(client: httpx.Client, count: int) -> list[str]:
    resp = client.post("/api/tasks", json={"tasks": [{"kind": "noop", "count": count}]})
    resp.raise_for_status()
    body = resp.json()
    return [t["id"] for t in body["tasks"]] if "tasks" in body else [body["id"]]


def _counts(client: httpx.Client) -> dict[str, int]:
    resp = client.get("/api/status")
    resp.raise_for_status()
    tasks: dict[str, int] = resp.json()["tasks"]
    return tasks


def _wait_final(client: httpx.Client, total: int, timeout: float, interval: float = 0.05) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = _counts(client)
        if sum(counts.get(s, 0) for s in FINAL) >= total:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"phage: only {counts} of {total} tasks final after {timeout:.0f}s")
        time.sleep(interval)


def _all_tasks(client: httpx.Client) -> list[dict[str, Any]]:
    """Every task (newest first), paging through GET /api/tasks."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        resp = client.get("/api/tasks", params=params)
        resp.raise_for_status()
        body = resp.json()
        out.extend(body["tasks"])
        cursor = body.get("next_cursor")
        if cursor is None:
            return out


def _dispatch_latencies(client: httpx.Client, ids: list[str]) -> list[float]:
    """created_at → first attempt's dispatched_at, in seconds, for each task id."""
    out = []
    for tid in ids:
        resp = client.get(f"/api/tasks/{tid}")
        resp.raise_for_status()
        task = resp.json()
        dispatched = [a["dispatched_at"] for a in task.get("attempts", []) if a.get("dispatched_at")]
        if dispatched:
            out.append(min(dispatched) - task["created_at"])
    return out


def measure_phage(
    args: argparse.Namespace,
    clients: Sequence[httpx.Client],
    pids: dict[str, int],
    config: str,
    extra: dict[str, Any],
) -> RunResult:
    """Warm up, then time ``args.tasks`` no-op tasks submitted in batches, round-robin over ``clients``.

    Each client talks to one coordinator (one, or several replicas on one
    database); the task counts and task rows are read through the first, which
    sees every replica's tasks. Dispatch latency is sampled under load and
    again at idle (tasks submitted one at a time, again round-robin).
    """
    first = clients[0]
    warm = args.warmup
    if warm:
        for i in range(0, warm, args.batch):
            _submit(clients[(i // args.batch) % len(clients)], min(args.batch, warm - i))
        _wait_final(first, warm, timeout=60)
    meter = CpuMeter(pids)
    ids: list[str] = []
    t0 = time.time()
    sent = 0
    while sent < args.tasks:
        n = min(args.batch, args.tasks - sent)
        ids += _submit(clients[(sent // args.batch) % len(clients)], n)
        sent += n
    t_enq = time.time()
    counts = _wait_final(first, warm + args.tasks, timeout=max(120.0, args.tasks / 50))
    cpu = meter.stop()
    timed = set(ids)
    tasks = [t for t in _all_tasks(first) if t["id"] in timed]
    verified = [t for t in tasks if t["state"] == "verified"]
    end = max(t["finished_at"] for t in verified) if verified else time.time()
    e2e = [t["finished_at"] - t["created_at"] for t in verified]
    sample = random.sample(ids, min(args.latency_samples, len(ids)))
    loaded = _dispatch_latencies(first, sample)
    # idle: the queue is empty and the nodes wait in their long-poll; one task at a time
    idle_ids: list[str] = []
    for i in range(args.idle_probes):
        idle_ids += _submit(clients[i % len(clients)], 1)
        time.sleep(1.0 / args.idle_rate)
    _wait_final(first, warm + args.tasks + args.idle_probes, timeout=60)
    idle = _dispatch_latencies(first, idle_ids)
    return RunResult(
        "phage",
        config,
        jobs=len(verified),
        seconds=end - t0,
        enqueue_seconds=t_enq - t0,
        failed=counts.get("failed", 0),
        cpu_s=cpu,
        background_pct=meter.background_pct,
        dispatch_loaded=latency_summary(loaded),
        dispatch_idle=latency_summary(idle),
        e2e_loaded=latency_summary(e2e),
        extra=extra,
    )
