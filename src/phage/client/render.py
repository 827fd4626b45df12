"""Rich renderings of tasks and nodes for the terminal."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from phage.api.models import Node, Task

STATE_STYLE = {
    "submitted": "white",
    "queued": "cyan",
    "dispatched": "blue",
    "running": "yellow",
    "verified": "bold green",
    "failed": "bold red",
    "cancelled": "magenta",
    "online": "green",
    "dead": "red",
    "removed": "dim",
    "pending": "bold yellow",
    "rejected": "bold red",
    "refused": "red",
    "draining": "yellow",
}


def state_text(state: str) -> Text:
    """A coloured state word."""
    return Text(state, style=STATE_STYLE.get(state, "white"))


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def ago(ts: float | None) -> str:
    """Seconds since ``ts``, briefly."""
    if not ts:
        return "-"
    d = max(0.0, time.time() - ts)
    return f"{d:.1f}s ago" if d < 120 else f"{d / 60:.0f}m ago"


def tasks_table(tasks: Sequence[Task], title: str = "tasks") -> Table:
    """One row per task."""
    table = Table(title=title, expand=False)
    for col in ("id", "kind", "state", "attempts", "node", "exit", "outputs", "age"):
        table.add_column(col)
    for t in tasks:
        result = t.result
        node = t.attempts[-1].node_id[:10] if t.attempts else ""
        outputs = ", ".join(o.path for o in result.outputs) if result else ""
        exit_code = result.exit_code if result else None
        table.add_row(
            t.id,
            t.kind,
            state_text(t.state),
            f"{t.attempts_made}/{t.max_attempts}",
            node,
            "" if exit_code is None else str(exit_code),
            outputs[:40],
            ago(t.created_at),
        )
    return table


_RECORD = (
    ("validated", "validated", ""),
    ("failed_validation", "failed", "red"),
    ("disagreements", "disagreed", "red"),
    ("attestation_refusals", "refused", "red"),
)


def record_text(reputation: dict[str, Any]) -> Text:
    """A node's reputation in a cell: validated results always, the counts against it when any, and
    its clean run (consecutive validated results; a long one earns single execution)."""
    out = Text()
    for key, label, style in _RECORD:
        value = int(reputation.get(key, 0) or 0)
        if value or key == "validated":
            out.append(("" if not out else " · ") + f"{label} {value}", style=style if value else "")
    return out + Text(f" · run {int(reputation.get('streak', 0) or 0)}", style="dim")


def nodes_table(nodes: Sequence[Node]) -> Table:
    """One row per node."""
    table = Table(title="nodes")
    for col in (
        "name",
        "id",
        "state",
        "trust",
        "record",
        "sandbox",
        "model",
        "active",
        "cpus",
        "memory",
        "gpus",
        "heartbeat",
    ):
        table.add_column(col)
    for n in nodes:
        gpus = ", ".join(str(g.get("model", "")) for g in n.gpus) or "-"
        trust = (
            Text("quarantined: " + (n.quarantine_reason or ""), style="bold red")
            if n.quarantined
            else Text("trusted" if n.trusted else "untrusted")
        )
        table.add_row(
            n.name,
            n.id[:12] + "…",
            state_text(n.state) + (Text(" draining", style="yellow") if n.draining else ""),
            trust,
            record_text(n.reputation),
            ",".join(n.sandboxes),
            n.loaded_model or "-",
            f"{n.active_tasks}/{n.max_concurrent_jobs or n.max_concurrency}",
            str(n.cpu_count),
            human_bytes(n.memory_total_bytes),
            gpus,
            ago(n.last_heartbeat),
        )
    return table
