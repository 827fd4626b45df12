"""The tables ``bench/dispatch.py`` prints and writes: rows per system, and phage over each peer as ratios.

Apart from the runs so that the script that drives processes stays readable.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from _util import fmt_ms
from rich.console import Console
from rich.table import Table

console = Console(width=max(170, shutil.get_terminal_size((170, 40)).columns))


PG_PEERS = ("procrastinate", "SKIP LOCKED loop")


def _on_postgres(row: dict[str, Any]) -> bool:
    return row["system"] in PG_PEERS or row["config"].startswith("PostgreSQL")


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """phage over each peer on the same kind of store.

    SQLite: phage's best NORMAL row, and its FULL row, over huey and arq.
    PostgreSQL: each phage row (one coordinator, two, …) over procrastinate and the plain loop.
    """
    phage_normal = [
        r for r in rows if r["system"] == "phage" and "sync=" not in r["config"] and not _on_postgres(r)
    ]
    phage_full = [r for r in rows if r["system"] == "phage" and "sync=FULL" in r["config"]]
    peers = [r for r in rows if r["system"] != "phage" and not _on_postgres(r)]
    out: dict[str, float] = {}
    if phage_normal:
        best = max(phage_normal, key=lambda r: r["jobs_per_s"])
        for p in peers:
            out[f"phage best ({best['config']}) / {p['system']} ({p['config']})"] = (
                best["jobs_per_s"] / p["jobs_per_s"]
            )
    if phage_full:
        full = phage_full[0]
        for p in peers:
            if p["system"] == "huey" and "FULL" in p["config"]:
                out[f"phage ({full['config']}) / {p['system']} ({p['config']})"] = (
                    full["jobs_per_s"] / p["jobs_per_s"]
                )
    phage_pg = [r for r in rows if r["system"] == "phage" and _on_postgres(r)]
    for r in phage_pg:
        for p in (p for p in rows if p["system"] in PG_PEERS):
            out[f"phage ({r['config']}) / {p['system']} ({p['config']})"] = r["jobs_per_s"] / p["jobs_per_s"]
    return out


def print_table(rows: list[dict[str, Any]], rat: dict[str, float], args: argparse.Namespace) -> None:
    """The rich table."""
    table = Table(
        title=f"durable no-op jobs, end to end (median of {args.rounds} round(s); {args.tasks} phage tasks, "
        f"{args.peer_jobs} peer jobs per run)"
    )
    table.add_column("system", style="bold")
    table.add_column("configuration")
    table.add_column("jobs/s", justify="right", style="bold green")
    table.add_column("min–max", justify="right")
    table.add_column("enqueue/s", justify="right")
    table.add_column("CPU ms/job", justify="right")
    table.add_column("dispatch p50/p99 ms\n(loaded)", justify="right")
    table.add_column("dispatch p50/p99 ms\n(idle)", justify="right")
    table.add_column("submit→verified\np50/p99 ms (loaded)", justify="right")
    table.add_column("other\nload %", justify="right")
    for r in rows:
        table.add_row(
            r["system"],
            r["config"],
            f"{r['jobs_per_s']:,.0f}",
            f"{r['jobs_per_s_min']:,.0f}–{r['jobs_per_s_max']:,.0f}",
            f"{r['enqueue_per_s']:,.0f}",
            f"{r['cpu_ms_per_job']:.2f}",
            f"{fmt_ms(r['dispatch_loaded_p50_ms'])} / {fmt_ms(r['dispatch_loaded_p99_ms'])}",
            f"{fmt_ms(r['dispatch_idle_p50_ms'])} / {fmt_ms(r['dispatch_idle_p99_ms'])}",
            f"{fmt_ms(r['e2e_loaded_p50_ms'])} / {fmt_ms(r['e2e_loaded_p99_ms'])}",
            f"{r['background_cpu_pct']:.0f}",
        )
    console.print(table)
    ratio_table = Table(title="ratios (jobs/s)")
    ratio_table.add_column("comparison")
    ratio_table.add_column("ratio", justify="right", style="bold")
    for name, value in rat.items():
        ratio_table.add_row(name, f"{value:.2f}×")
    console.print(ratio_table)


def markdown(rows: list[dict[str, Any]], rat: dict[str, float], args: argparse.Namespace) -> str:
    """The same tables in Markdown (written next to the JSON, for BENCHMARKS.md)."""
    lines = [
        "| system | configuration | jobs/s (median) | min–max | enqueue/s | CPU ms/job | "
        "dispatch p50 / p99 ms (loaded) | dispatch p50 / p99 ms (idle) | submit→verified p50 / p99 ms | "
        "other load % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['config']} | **{r['jobs_per_s']:,.0f}** | "
            f"{r['jobs_per_s_min']:,.0f}–{r['jobs_per_s_max']:,.0f} | {r['enqueue_per_s']:,.0f} | "
            f"{r['cpu_ms_per_job']:.2f} | "
            f"{fmt_ms(r['dispatch_loaded_p50_ms'])} / {fmt_ms(r['dispatch_loaded_p99_ms'])} | "
            f"{fmt_ms(r['dispatch_idle_p50_ms'])} / {fmt_ms(r['dispatch_idle_p99_ms'])} | "
            f"{fmt_ms(r['e2e_loaded_p50_ms'])} / {fmt_ms(r['e2e_loaded_p99_ms'])} | "
            f"{r['background_cpu_pct']:.0f} |"
        )
    lines += ["", "| comparison | ratio |", "|---|---:|"]
    lines += [f"| {name} | **{value:.2f}×** |" for name, value in rat.items()]
    return "\n".join(lines) + "\n"
