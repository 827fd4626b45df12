"""Command-line verbs for composable networks: ``phage train`` and ``phage networks``."""

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from phage.client.cli_common import JsonOpt, KeyOpt, UrlOpt, connect, console, emit_json, run


def progress_table(net: dict[str, Any]) -> Table:
    """One row per VNode: where it runs, its step, local loss, speed and how its outputs travel."""
    table = Table(title=f"{net['name']} · {net['id']} · {net['state']}", title_justify="left")
    for col in ("VNode", "inputs", "node", "step", "batch", "local loss", "samples/s", "outputs sent"):
        table.add_column(
            col, justify="right" if col in ("step", "batch", "local loss", "samples/s") else "left"
        )
    for v in net["vnodes"]:
        loss = v["loss"]
        table.add_row(
            v["id"] + (" ✓" if v["done"] else ""),
            ", ".join(v["inputs"]),
            (v["node_id"] or "placing…")[:12],
            str(v["step"]),
            str(v["last_batch"] + 1),
            "–" if loss is None else f"{loss:.4f}",
            f"{v['samples_per_s']:.0f}",
            sent(v.get("frames", {})),
        )
    if net.get("result") and "accuracy" in net["result"]:
        table.caption = f"test accuracy {net['result']['accuracy']:.4f}"
    if net.get("error"):
        table.caption = f"[red]{net['error']}[/]"
    return table


def sent(frames: dict[str, int]) -> str:
    """How a VNode's outputs went so far: to this node's VNodes, node to node, through the coordinator."""
    ways = [("in memory", "local"), ("node to node", "direct"), ("relayed", "relayed")]
    return ", ".join(f"{frames[k]} {label}" for label, k in ways if frames.get(k)) or "–"


def register(app: typer.Typer) -> None:
    """Add the verbs to the main ``phage`` app (called from :mod:`phage.client.cli`)."""

    @app.command()
    def train(
        spec: Annotated[Path, typer.Argument(help="Network spec: JSON or YAML (a graph of VNodes).")],
        data: Annotated[Path, typer.Option("--data", help="Dataset: .npz or safetensors with x and y.")],
        epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 10,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per batch.")] = 32,
        seed: Annotated[int, typer.Option(help="Seed for weights and batch order.")] = 0,
        checkpoint_every: Annotated[
            int, typer.Option("--checkpoint-every", help="Steps between checkpoints.")
        ] = 20,
        check_rate: Annotated[
            float, typer.Option("--check-rate", help="Share of untrusted nodes' steps recomputed elsewhere.")
        ] = 0.05,
        holdout_bound: Annotated[
            float,
            typer.Option(
                "--holdout-bound",
                help="How far an untrusted node's checkpoint may raise its VNode's held-out loss.",
            ),
        ] = 0.5,
        wait: Annotated[
            bool, typer.Option("--wait/--no-wait", help="Show live progress until it ends.")
        ] = True,
        url: UrlOpt = "http://127.0.0.1:8080",
        key: KeyOpt = None,
    ) -> None:
        """Train a network across the pool's nodes, each VNode on its own local loss."""

        async def main() -> int:
            async with connect(url, key, timeout=600) as client:
                digest = await client.upload_dataset(data.read_bytes())
                net = await client.train(
                    spec.read_text(),
                    digest,
                    epochs=epochs,
                    batch_size=batch_size,
                    seed=seed,
                    checkpoint_every=checkpoint_every,
                    check_rate=check_rate,
                    holdout_bound=holdout_bound,
                )
                if not wait:
                    console.print(net["id"])
                    return 0
                with Live(progress_table(net), console=console, refresh_per_second=4) as live:
                    while net["state"] == "running":
                        await asyncio.sleep(0.5)
                        net = await client.network(net["id"])
                        live.update(progress_table(net))
                return 0 if net["state"] == "completed" else 1

        started = time.monotonic()
        code = run(main())
        if wait:
            console.print(f"[dim]{time.monotonic() - started:.1f} s[/]")
        raise typer.Exit(code)

    @app.command()
    def networks(
        network_id: Annotated[str | None, typer.Argument(help="One network's VNodes and progress.")] = None,
        as_json: JsonOpt = False,
        url: UrlOpt = "http://127.0.0.1:8080",
        key: KeyOpt = None,
    ) -> None:
        """Training jobs, or one of them in detail."""

        async def main() -> None:
            async with connect(url, key) as client:
                if network_id:
                    net = await client.network(network_id)
                    if as_json:
                        emit_json(net)
                    else:
                        console.print(progress_table(net))
                    return
                nets = await client.networks()
                if as_json:
                    emit_json(nets)
                    return
                table = Table("id", "name", "state", "test accuracy")
                for n in nets:
                    acc = (n.get("result") or {}).get("accuracy")
                    table.add_row(n["id"], n["name"], n["state"], "–" if acc is None else f"{acc:.4f}")
                console.print(table)

        run(main())
