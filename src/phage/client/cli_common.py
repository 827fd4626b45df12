"""What every ``phage`` client verb shares: consoles, the URL and key options, error reporting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

from phage.api.models import Task
from phage.client._calls import PhageClientError, Progress
from phage.client.pinning import verify_for
from phage.client.sdk import PhageClient
from phage.errors import PhageError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="PHAGE_URL", help="Coordinator HTTP address.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="PHAGE_API_KEY", help="API key (default: the admin key in PHAGE_DATA_DIR)."),
]
DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="PHAGE_DATA_DIR", help="Coordinator data directory.")
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


def connect(url: str, key: str | None, *, timeout: float | None = 30.0) -> PhageClient:
    """An SDK client for a verb, with the key and the TLS trust chosen by ``phage --ca-cert`` /
    ``--ca-fingerprint`` (which set ``PHAGE_CA_CERT`` / ``PHAGE_CA_FINGERPRINT`` for this process)."""
    ca_cert = os.environ.get("PHAGE_CA_CERT")
    verify = verify_for(
        url,
        ca_cert=Path(ca_cert) if ca_cert else None,
        ca_fingerprint=os.environ.get("PHAGE_CA_FINGERPRINT") or None,
    )
    return PhageClient(url, api_key(key), timeout=timeout, verify=verify)


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
    except httpx.TransportError as exc:
        try:
            where = str(exc.request.url)
        except RuntimeError:  # no request attached
            where = "the coordinator"
        err_console.print(f"[bold red]cannot reach {where}[/]: {escape(str(exc) or type(exc).__name__)}")
        raise typer.Exit(1) from None


def emit_json(data: Any) -> None:
    """One JSON document on stdout, unstyled and unwrapped, for scripts."""
    print(json.dumps(data, indent=1))


@contextlib.contextmanager
def transfer_progress(what: str, *, enabled: bool = True) -> Iterator[Progress | None]:
    """A rich progress bar (on stderr) for an upload or download; yields the SDK's progress callback."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with RichProgress(*columns, console=err_console, transient=True) as bar:
        job = bar.add_task(what, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(job, completed=done, total=total)

        yield update


async def wait_for(client: PhageClient, ids: list[str], *, show: bool = True) -> list[Task]:
    """Wait until every task is final, with a progress bar of finished tasks (on stderr)."""
    final: dict[str, Task] = {}
    with RichProgress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    ) as bar:
        job = bar.add_task("waiting", total=len(ids))
        for tid in ids:

            def seen(task: Task) -> None:
                bar.update(job, description=f"{task.id[:12]}… {task.state}")

            final[tid] = await client.wait(tid, on_change=seen)
            bar.advance(job)
    return [final[t] for t in ids]


run = run_reporting
"""The name the training verbs use."""


def parse_size(text: str, option: str) -> int:
    """``24GiB``, ``16GB``, ``512M`` or a byte count, as bytes."""
    units = {
        "": 1,
        "k": 10**3,
        "m": 10**6,
        "g": 10**9,
        "t": 10**12,
        "ki": 2**10,
        "mi": 2**20,
        "gi": 2**30,
        "ti": 2**40,
    }
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a size like 24GiB or 16GB", param_hint=option)
    return int(float(m.group(1)) * units[(m.group(2) or "").lower()])
