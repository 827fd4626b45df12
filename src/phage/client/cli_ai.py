"""Command-line verbs for the AI side of the pool: ``phage chat``, ``phage keys …``, ``phage usage``."""

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from phage.api.models import TokenCounts
from phage.client.cli_common import DEFAULT_URL, JsonOpt, KeyOpt, UrlOpt, connect, console, emit_json
from phage.client.cli_common import run_reporting as _run


def register(app: typer.Typer) -> None:
    """Add the verbs to the main ``phage`` app (called from :mod:`phage.client.cli`)."""
    keys_app = typer.Typer(help="Create, list and revoke API keys; set credit limits (admin).")
    app.add_typer(keys_app, name="keys")

    @keys_app.command("create")
    def keys_create(
        name: str,
        role: Annotated[str, typer.Option(help="user or admin.")] = "user",
        limit: Annotated[int | None, typer.Option("--limit", help="Credit limit in tokens.")] = None,
        as_json: JsonOpt = False,
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Create a key; its secret is printed once."""

        async def main() -> None:
            async with connect(url, key) as client:
                made = await client.create_key(name, role, limit)
            if as_json:
                emit_json(made.model_dump(mode="json"))
                return
            console.print(f"[bold]{made.id}[/] {made.name} ({made.role})")
            console.print(f"key: [bold green]{made.key}[/]  (shown once: store it now)")

        _run(main())

    @keys_app.command("list")
    def keys_list(as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
        """Every key, without secrets."""

        async def main() -> None:
            async with connect(url, key) as client:
                keys = await client.list_keys()
            if as_json:
                emit_json([k.model_dump(mode="json") for k in keys])
                return
            table = Table("id", "name", "role", "credit limit", "state")
            for k in keys:
                limit = k.credit_limit_tokens
                table.add_row(
                    k.id,
                    k.name,
                    k.role,
                    "—" if limit is None else f"{limit:,}",
                    "[red]revoked[/]" if k.revoked else "[green]active[/]",
                )
            console.print(table)

        _run(main())

    @keys_app.command("revoke")
    def keys_revoke(key_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
        """Revoke a key: refused from its next request on."""

        async def main() -> None:
            async with connect(url, key) as client:
                await client.revoke_key(key_id)
            console.print(f"{key_id} [red]revoked[/]")

        _run(main())

    @keys_app.command("limit")
    def keys_limit(
        key_id: str,
        tokens: Annotated[int | None, typer.Argument(help="Tokens in all; omit to lift the limit.")] = None,
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Set a key's credit limit (requests past it get 402), or lift it."""

        async def main() -> None:
            async with connect(url, key) as client:
                await client.set_key_limit(key_id, tokens)
            console.print(f"{key_id}: " + ("no limit" if tokens is None else f"{tokens:,} tokens"))

        _run(main())

    @keys_app.command("topup")
    def keys_topup(
        key_id: str,
        tokens: Annotated[int, typer.Argument(help="Tokens to add to the key's credit.")],
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Add tokens to a key's credit balance."""

        async def main() -> None:
            async with connect(url, key) as client:
                done = await client.top_up_key(key_id, tokens)
            console.print(
                f"{key_id}: {done['credit_left_tokens']:,} tokens left of {done['credit_limit_tokens']:,}"
            )

        _run(main())

    @keys_app.command("rates")
    def keys_rates(
        key_id: str,
        rpm: Annotated[int | None, typer.Option("--rpm", help="Requests a minute.")] = None,
        tpm: Annotated[int | None, typer.Option("--tpm", help="Tokens a minute.")] = None,
        concurrent: Annotated[
            int | None, typer.Option("--concurrent", help="Chats in flight at once.")
        ] = None,
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Set a key's own rate limits (an option left out: the coordinator's default); over them: 429."""

        async def main() -> None:
            async with connect(url, key) as client:
                await client.set_key_rates(key_id, rpm, tpm, concurrent)
            console.print(
                f"{key_id}: rpm={rpm or 'default'} tpm={tpm or 'default'} "
                f"concurrent={concurrent or 'default'}"
            )

        _run(main())

    @app.command()
    def usage(
        key_id: Annotated[str | None, typer.Option("--key-id", help="One key (admins see all).")] = None,
        requests: Annotated[int, typer.Option("--requests", help="Also list the N latest requests.")] = 0,
        nodes: Annotated[bool, typer.Option("--nodes", help="Tokens each node served (admin).")] = False,
        as_json: JsonOpt = False,
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Tokens used per API key, by model and by node; the request log; what each node served."""

        async def main() -> None:
            async with connect(url, key) as client:
                rows = await client.usage(key_id)
                log = await client.usage_requests(key_id, requests) if requests else []
                accounts = await client.node_accounts() if nodes else []
            if as_json:
                emit_json(
                    {
                        "keys": [k.model_dump(mode="json") for k in rows],
                        **({"requests": log} if requests else {}),
                        **({"nodes": accounts} if nodes else {}),
                    }
                    if requests or nodes
                    else [k.model_dump(mode="json") for k in rows]
                )
                return
            table = Table("key", "model / node", "requests", "prompt", "completion", "credit left")
            for k in rows:
                left = k.credit_left_tokens
                table.add_row(
                    f"[bold]{k.name or k.key_id}[/]", "all", *_counts(k), "—" if left is None else f"{left:,}"
                )
                for model, u in sorted(k.by_model.items()):
                    table.add_row("", model, *_counts(u), "")
                for node, u in sorted(k.by_node.items()):
                    table.add_row("", f"[dim]node {node[:12]}…[/]", *_counts(u), "")
            console.print(table)
            if log:
                reqs = Table("request", "kind", "model", "node", "prompt", "completion", "outcome", "checked")
                for r in log:
                    reqs.add_row(
                        r["id"],
                        r["kind"],
                        r["model"],
                        (r["node_id"] or "—")[:12],
                        f"{r['prompt_tokens']:,}",
                        f"{r['completion_tokens']:,}",
                        r["outcome"],
                        r["checked"] or "—",
                    )
                console.print(reqs)
            if accounts:
                earned = Table("node (owner account)", "requests", "prompt", "completion", "credited")
                for a in accounts:
                    earned.add_row(
                        a["node_id"],
                        f"{a['requests']:,}",
                        f"{a['prompt_tokens']:,}",
                        f"{a['completion_tokens']:,}",
                        f"{a['credited_tokens']:,}",
                    )
                console.print(earned)

        _run(main())

    @app.command()
    def chat(
        message: Annotated[str, typer.Argument(help="What to say (use - to read stdin).")],
        model: Annotated[str | None, typer.Option(help="Model (default: the first the pool serves).")] = None,
        system: Annotated[str | None, typer.Option(help="A system message.")] = None,
        max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
        temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Chat with a model the pool serves; the answer streams as it is generated."""
        text = sys.stdin.read() if message == "-" else message

        async def main() -> None:
            async with connect(url, key, timeout=None) as client:
                chosen = model or next(iter(await client.models()), None)
                if chosen is None:
                    console.print("[red]no live node serves a model[/]")
                    raise typer.Exit(1)
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": text}
                ]
                usage: dict[str, Any] = {}
                async for chunk in client.chat_stream(
                    chosen, messages, max_tokens=max_tokens, temperature=temperature
                ):
                    for choice in chunk.get("choices", []):
                        piece = choice.get("delta", {}).get("content")
                        if piece:
                            console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
                    usage = chunk.get("usage") or usage
                console.print()
                if usage:
                    console.print(
                        f"[dim]{chosen}: {usage['prompt_tokens']} prompt + "
                        f"{usage['completion_tokens']} completion tokens[/]"
                    )

        _run(main())


def _counts(u: TokenCounts) -> tuple[str, str, str]:
    return f"{u.requests:,}", f"{u.prompt_tokens:,}", f"{u.completion_tokens:,}"
