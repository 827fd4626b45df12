"""The tables ``bench/heartbeats.py`` prints and writes (one row per ladder step).

Apart from the script that drives the coordinator and the simulated nodes, so that it stays readable.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from _util import fmt_ms


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The rich table."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(170, shutil.get_terminal_size((170, 40)).columns))
    table = Table(
        title=(
            f"{args.coordinators} coordinators on one PostgreSQL"
            if args.coordinators > 1
            else "one coordinator" + (" on PostgreSQL" if args.postgres else "")
        )
        + f", {args.interval:g} s heartbeats over gRPC + mTLS"
        + (" + a FetchTask long-poll per node" if args.long_poll else "")
        + f" ({args.window:g} s window per step, {args.procs} client processes, same {os.cpu_count()} cores)"
    )
    for name, justify in (
        ("nodes", "right"),
        ("enroll/s", "right"),
        ("heartbeats/s\n(got / want)", "right"),
        ("latency p50 / p99 ms", "right"),
        ("max ms", "right"),
        ("client lag\np99 ms", "right"),
        ("errors", "right"),
        ("online", "right"),
        ("heard < 15 s", "right"),
        ("coordinators\nCPU % · RSS MiB", "right"),
        ("database\nCPU %", "right"),
        ("clients\nCPU %", "right"),
        ("other\nload %", "right"),
        ("GET /api/status\nms", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        lat = r["latency"]
        table.add_row(
            f"{r['nodes']:,}",
            f"{r['enroll_per_s']:,.0f}" if r["enroll_per_s"] else "-",
            f"{r['heartbeats_per_s']:,.0f} / {r['expected_per_s']:,.0f}",
            f"{fmt_ms(lat['p50_ms'])} / {fmt_ms(lat['p99_ms'])}",
            fmt_ms(lat["max_ms"]),
            fmt_ms(r["client_lag"]["p99_ms"]),
            str(sum(r["errors"].values())),
            f"{r['online']:,} ({100 * r['online_fraction']:.1f}%)",
            f"{100 * r['fresh_fraction']:.1f}%",
            f"{r['coordinator_cpu_pct']:.0f} · {r['coordinator_rss_mib']:,.0f}",
            _pct(r.get("database_cpu_pct")),
            f"{r['clients_cpu_pct']:.0f}",
            f"{r['other_load_pct']:.0f}",
            fmt_ms(r["status_ms"]),
        )
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table in Markdown (written next to the JSON, for BENCHMARKS.md)."""
    lines = [
        "| nodes | enroll/s | heartbeats/s (got / want) | latency p50 / p99 ms | max ms "
        "| client lag p99 ms | errors | online (GET /api/status) | heard < 1.5 intervals "
        "| coordinators' CPU % | coordinators' RSS MiB | database CPU % | clients CPU % | machine busy % "
        "| other load % | GET /api/status ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = r["latency"]
        lines.append(
            f"| {r['nodes']:,} | {r['enroll_per_s'] or 0:,.0f} | "
            f"{r['heartbeats_per_s']:,.0f} / {r['expected_per_s']:,.0f} | "
            f"{fmt_ms(lat['p50_ms'])} / **{fmt_ms(lat['p99_ms'])}** | {fmt_ms(lat['max_ms'])} | "
            f"{fmt_ms(r['client_lag']['p99_ms'])} | {sum(r['errors'].values())} | "
            f"{r['online']:,} ({100 * r['online_fraction']:.1f} %) | {100 * r['fresh_fraction']:.1f} % | "
            f"{r['coordinator_cpu_pct']:.0f} | {r['coordinator_rss_mib']:,.0f} | "
            f"{_pct(r.get('database_cpu_pct'))} | {r['clients_cpu_pct']:.0f} | "
            f"{r['machine_busy_pct']:.0f} | {r['other_load_pct']:.0f} | {fmt_ms(r['status_ms'])} |"
        )
    return "\n".join(lines) + "\n"
