"""What every ``phage`` client verb shares: consoles, the URL and key options, error reporting."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from phage.client.sdk import PhageClientError
from phage.errors import PhageError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="PHAGE_URL", help="Coordinator HTTP address.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="PHAGE_API_KEY", help="API key (default: the admin key in PHAGE_DATA_DIR)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one document) instead of a table.")]
DEFAULT_URL = "http://127.0.0.1:8080"


def default_data_dir() -> Path:
    """The coordinator data directory a client on the same machine reads the admin key from."""
    return Path(os.environ.get("PHAGE_DATA_DIR", str(Path.home() / ".phage")))


def api_key(key: str | None) -> str:
    """``--key``, else the admin key of a coordinator on this machine."""
    if key:
        return key
    path = default_data_dir() / "admin-key"
    if path.exists():
        return path.read_text().strip()
    raise typer.BadParameter("no API key: pass --key or set PHAGE_API_KEY", param_hint="--key")


def run_reporting(coro: Coroutine[Any, Any, T]) -> T:
    """Run a verb; a phage error becomes one red line on stderr and exit status 1."""
    try:
        return asyncio.run(coro)
    except PhageClientError as exc:
        err_console.print(f"[bold red]error {exc.status}[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
    except PhageError as exc:
        err_console.print(f"[bold red]error[/]: {escape(exc.message)}")
        raise typer.Exit(1) from None
