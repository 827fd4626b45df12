"""What every ``phage`` command-line verb shares: consoles, common options, the API key, errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from phage.client.sdk import PhageClientError
from phage.errors import PhageError

console = Console()
err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="PHAGE_DATA_DIR", help="Coordinator data directory.")
]
UrlOpt = Annotated[str, typer.Option("--url", envvar="PHAGE_URL", help="Coordinator HTTP address.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="PHAGE_API_KEY", help="API key (default: the admin key in --data-dir)."),
]


def default_data_dir() -> Path:
    """Where the coordinator keeps its data unless told otherwise."""
    return Path(os.environ.get("PHAGE_DATA_DIR", str(Path.home() / ".phage")))


def api_key(key: str | None) -> str:
    """The key given, or the admin key of the local coordinator's data directory."""
    if key:
        return key
    path = default_data_dir() / "admin-key"
    if path.exists():
        return path.read_text().strip()
    raise typer.BadParameter("no API key: pass --key or set PHAGE_API_KEY", param_hint="--key")


def run(coro: Any) -> Any:
    """Run a client coroutine; an error the coordinator answers is printed, not a traceback."""
    try:
        return asyncio.run(coro)
    except PhageClientError as exc:
        err_console.print(f"[bold red]error {exc.status}[/]: {exc.message}")
        raise typer.Exit(1) from None
    except PhageError as exc:
        err_console.print(f"[bold red]error[/]: {exc.message}")
        raise typer.Exit(1) from None
