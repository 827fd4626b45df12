"""Checked chat's cost (``bench/chat_proxy.py --check-rates 0,0.05,1``).

An open pool of two nodes on the transformers engine with a tiny local model: one
untrusted (chats go to it because the pool opts in), one trusted (it checks). For each
check rate the same streams run and the table shows what the client saw (time to first
token, whole-stream time, p50/p99) beside rate 0, and what checking cost the checking
node: node-seconds per checked token, from the coordinator's ``/metrics``. Checks run
after each response, so the goal is no added client latency.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from _util import clean_nan, fmt_ms, machine_info, percentile, write_results
from chat_proxy import console, drive
from rich.table import Table

from phage.node.engines.tinymodel import make_tiny_model
from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

MODEL = "tiny-llama"


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _settled(coord: CoordinatorProcess) -> bool:
    with coord.client() as c:
        rows = c.get("/api/usage/requests", params={"limit": 1000}).json()["requests"]
    return not any(r["checked"] == "pending" for r in rows)


def _pool(tmp: Path, model: Path, rate: float) -> tuple[CoordinatorProcess, list[NodeProcess]]:
    env = {
        "PHAGE_ADMISSION": "open",
        "PHAGE_CHAT_UNTRUSTED_NODES": "1",
        "PHAGE_CHAT_CHECK_UNTRUSTED": str(rate),
    }
    coord = CoordinatorProcess(tmp / f"coordinator-{rate}", heartbeat_s=2.0, env=env).start()
    nodes = [
        NodeProcess(coord, tmp / f"{name}-{rate}", name=name, heartbeat_s=2.0, concurrency=8,
                    engine="transformers", model=str(model)).start()
        for name in ("checker", "served")
    ]  # fmt: skip
    listed = wait_online(coord, 2, timeout=120)
    checker = next(n["id"] for n in listed if n["name"] == "checker")
    with coord.client() as c:
        c.post(f"/api/nodes/{checker}", json={"trusted": True}).raise_for_status()

    def served() -> bool:
        with coord.client() as c:
            return [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]

    wait_until(served, 60, what="model listed")
    return coord, nodes


def check_rows(rates: list[float], args: argparse.Namespace) -> None:
    """Run the same streams at each check rate; print and save the rows."""
    tmp = Path(tempfile.mkdtemp(prefix="phage-bench-check-"))
    model = make_tiny_model(tmp / "tiny-llama")
    streams, concurrency, tokens = args.streams or 60, 4, min(args.tokens, 16)
    rows: list[dict[str, Any]] = []
    for rate in rates:
        coord, nodes = _pool(tmp, model, rate)
        try:
            run = asyncio.run(
                drive(f"check {rate:g}", f"{coord.url}/v1/chat/completions", coord.admin_key,
                      concurrency, streams, tokens, MODEL)
            )  # fmt: skip

            wait_until(lambda: _settled(coord), 120, what="every check done")  # noqa: B023
            with coord.client() as c:
                metrics = c.get("/metrics").text
            checked_tokens = _metric(metrics, "phage_chat_checked_tokens_total")
            seconds = _metric(metrics, "phage_chat_check_node_seconds_total")
            rows.append(
                {
                    "rate": rate,
                    "streams": len(run.samples),
                    "errors": run.errors,
                    "ttft_p50_ms": percentile([s.ttft for s in run.samples], 50) * 1000,
                    "ttft_p99_ms": percentile([s.ttft for s in run.samples], 99) * 1000,
                    "total_p50_ms": percentile([s.total for s in run.samples], 50) * 1000,
                    "total_p99_ms": percentile([s.total for s in run.samples], 99) * 1000,
                    "checks_pass": _metric(metrics, "phage_chat_checks_total", '{verdict="pass"}'),
                    "checks_fail": _metric(metrics, "phage_chat_checks_total", '{verdict="fail"}'),
                    "checked_tokens": checked_tokens,
                    "node_ms_per_checked_token": seconds / checked_tokens * 1000 if checked_tokens else None,
                }
            )
        finally:
            for p in (*nodes, coord):
                p.stop()
    base = rows[0]
    table = Table(
        title=f"checked chat: {streams} streams, {concurrency} at a time, {tokens} tokens, tiny model"
    )
    for col in ("check rate", "TTFT p50", "TTFT p99", "stream p50", "stream p99", "added p50",
                "checks pass/fail", "node ms / checked token", "errors"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['rate']:g}",
            fmt_ms(r["ttft_p50_ms"]),
            fmt_ms(r["ttft_p99_ms"]),
            fmt_ms(r["total_p50_ms"]),
            fmt_ms(r["total_p99_ms"]),
            fmt_ms(r["total_p50_ms"] - base["total_p50_ms"]),
            f"{r['checks_pass']:.0f}/{r['checks_fail']:.0f}",
            "—" if r["node_ms_per_checked_token"] is None else f"{r['node_ms_per_checked_token']:.2f}",
            str(r["errors"]),
        )
    console.print(table)
    payload = {"machine": machine_info(), "results": clean_nan(rows), "command": " ".join(sys.argv)}
    console.print(f"results: {write_results('chat_check', payload)}")
