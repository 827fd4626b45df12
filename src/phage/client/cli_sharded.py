"""Command-line verbs for sharded models: ``phage models``, ``phage models declare|coverage|delete``."""

from typing import Annotated, Any

import typer
from rich.table import Table

from phage.client.cli_common import JsonOpt, KeyOpt, UrlOpt, api_key, console, emit_json, parse_size, run
from phage.client.sdk import PhageClient


def coverage_bar(per_block: list[int], redundancy: int) -> str:
    """Blocks as a bar: █ at the target redundancy, ▄ served below it, · a gap."""
    return "".join("█" if n >= redundancy else "▄" if n else "[red]·[/]" for n in per_block)


def register(app: typer.Typer) -> None:
    """Add the verbs to the main ``phage`` app (called from :mod:`phage.client.cli`)."""

    models_app = typer.Typer(help="Sharded models: one model's blocks served across several nodes.")
    app.add_typer(models_app, name="models")

    def show(models: list[dict[str, Any]]) -> None:
        table = Table("model", "blocks", "coverage", "ready", "servers", "gaps")
        for m in models:
            cov = m["coverage"]
            table.add_row(
                m["name"],
                f"{coverage_bar(cov['per_block'], m['redundancy'])} {m['num_blocks']}",
                f"{cov['coverage_percent']}%",
                "[green]yes[/]" if cov["ready_for_inference"] else "[red]no[/]",
                str(len(cov["servers"])),
                ", ".join(cov["gaps"]) or "—",
            )
        console.print(table)

    @models_app.callback(invoke_without_command=True)
    def models_list(
        ctx: typer.Context,
        as_json: JsonOpt = False,
        url: UrlOpt = "http://127.0.0.1:8080",
        key: KeyOpt = None,
    ) -> None:
        """Every sharded model, its blocks as a bar, coverage and gaps."""
        if ctx.invoked_subcommand is not None:
            return

        async def main() -> None:
            async with PhageClient(url, api_key(key)) as client:
                models = await client.sharded_models()
            if as_json:
                emit_json(models)
            else:
                show(models)

        run(main())

    @models_app.command("declare")
    def declare(
        name: str,
        checkpoint: Annotated[str, typer.Option(help="Checkpoint path on the nodes (or id).")],
        blocks: Annotated[int, typer.Option(help="Number of blocks (the checkpoint's layers).")],
        bytes_per_block: Annotated[str, typer.Option(help="Memory one block takes, e.g. 400MiB.")],
        redundancy: Annotated[int, typer.Option(help="Nodes that should serve each block.")] = 1,
        edge_bytes: Annotated[str, typer.Option(help="Memory for embeddings or head, e.g. 1GiB.")] = "0",
        url: UrlOpt = "http://127.0.0.1:8080",
        key: KeyOpt = None,
    ) -> None:
        """Declare a sharded model (admin)."""

        async def main() -> None:
            async with PhageClient(url, api_key(key)) as client:
                made = await client.declare_sharded_model(
                    name=name,
                    checkpoint=checkpoint,
                    num_blocks=blocks,
                    bytes_per_block=parse_size(bytes_per_block, "--bytes-per-block"),
                    redundancy=redundancy,
                    edge_bytes=parse_size(edge_bytes, "--edge-bytes"),
                )
            show([made])

        run(main())

    @models_app.command("coverage")
    def coverage(
        name: str, as_json: JsonOpt = False, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None
    ) -> None:
        """Who holds each block of one model."""

        async def main() -> None:
            async with PhageClient(url, api_key(key)) as client:
                cov = await client.coverage(name)
            if as_json:
                emit_json(cov)
                return
            table = Table("node", "blocks", "standby", "tokens/s")
            for s in cov["servers"]:
                table.add_row(
                    s["node_id"][:16], s["blocks"], "yes" if s["standby"] else "", str(s["throughput"])
                )
            console.print(
                f"{name}: {coverage_bar(cov['per_block'], cov['redundancy'])} {cov['coverage_percent']}%"
            )
            console.print(table)

        run(main())

    @models_app.command("delete")
    def delete(name: str, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
        """Stop serving a sharded model (admin)."""

        async def main() -> None:
            async with PhageClient(url, api_key(key)) as client:
                await client.delete_sharded_model(name)
            console.print(f"deleted {name}")

        run(main())
