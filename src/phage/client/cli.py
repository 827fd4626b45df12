"""The ``phage`` command: every role (coordinator, node, demo) and the client verbs."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel

from phage import __version__
from phage.api.models import TaskRef
from phage.client.cli_ai import register as register_ai_verbs
from phage.client.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    UrlOpt,
    connect,
    console,
    emit_json,
    err_console,
    run_reporting,
    transfer_progress,
    wait_for,
)
from phage.client.cli_ops import register as register_ops
from phage.client.cli_roles import register as register_roles
from phage.client.cli_sharded import register as register_sharded_verbs
from phage.client.cli_train import register as register_train_verbs
from phage.client.render import nodes_table, state_text, tasks_table

app = typer.Typer(
    name="phage",
    help="Turn machines contributed by many owners into one dependable service for AI work.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_run = run_reporting


@app.callback()
def main_options(
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            "--ca-cert", envvar="PHAGE_CA_CERT", help="Trust this CA file for an https:// coordinator URL."
        ),
    ] = None,
    ca_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--ca-fingerprint",
            envvar="PHAGE_CA_FINGERPRINT",
            help="Pin the pool's own CA (sha256:…, as in the join line) for an https:// URL.",
        ),
    ] = None,
) -> None:
    """Turn machines contributed by many owners into one dependable service for AI work."""
    # The global options are shorthands for the variables every client verb reads (cli_common.connect).
    if ca_cert is not None:
        os.environ["PHAGE_CA_CERT"] = str(ca_cert)
    if ca_fingerprint:
        os.environ["PHAGE_CA_FINGERPRINT"] = ca_fingerprint


@app.command()
def version() -> None:
    """Print phage's version."""
    console.print(__version__)


@app.command()
def keygen(
    key_dir: Annotated[Path, typer.Option(help="Where to keep the identity.")] = Path.home()
    / ".phage"
    / "node",
) -> None:
    """Make (or show) this node's Ed25519 identity and print its node id."""
    from phage.node.connection import secure_key_dir
    from phage.pki import NodeIdentity

    secure_key_dir(key_dir)
    identity = NodeIdentity.load_or_create(key_dir)
    err_console.print(f"identity in {key_dir}/identity.pem")
    console.print(identity.node_id)


def _pack_dir(path: Path, into: Path) -> None:
    """Tar and gzip a directory into a file (not memory: workspaces may be large)."""
    with tarfile.open(into, mode="w:gz") as tar:
        for item in sorted(path.rglob("*")):
            if item.is_symlink():
                raise typer.BadParameter(f"{item} is a symlink; workspaces may not contain links")
            tar.add(item, arcname=item.relative_to(path).as_posix(), recursive=False)


@app.command()
def submit(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="A directory, or files, to send as the workspace.")
    ] = None,
    entrypoint: Annotated[str | None, typer.Option("--entrypoint", "-e", help="File to run.")] = None,
    interpreter: Annotated[
        str, typer.Option(help="Program that runs the entrypoint ('' = run it).")
    ] = "python3",
    arg: Annotated[list[str] | None, typer.Option("--arg", help="Argument (repeatable).")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME=VALUE (repeatable).")] = None,
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="Output glob (repeatable).")
    ] = None,
    timeout: Annotated[int, typer.Option(help="Wall-clock limit in seconds.")] = 300,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    count: Annotated[int, typer.Option(help="Submit this many copies.")] = 1,
    noop: Annotated[bool, typer.Option(help="Submit a no-op task (tests the queue only).")] = False,
    wait: Annotated[
        bool, typer.Option(help="Wait for the tasks to finish; exit 1 if any failed or was cancelled.")
    ] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Submit a job: a workspace (directory or files) and how to run it. Prints the task ids."""
    task: dict[str, Any]
    workspace: Path | None = None
    if noop:
        task = {"kind": "noop", "priority": priority, "count": count}
    else:
        if not entrypoint:
            raise typer.BadParameter("--entrypoint is required for a job", param_hint="--entrypoint")
        envs = dict(e.split("=", 1) for e in (env or []) if "=" in e)
        manifest = {
            "entrypoint": entrypoint,
            "interpreter": interpreter,
            "args": arg or [],
            "env": envs,
            "outputs": output or [],
            "timeout_s": timeout,
        }
        task = {"kind": "job", "manifest": manifest, "priority": priority, "count": count}
        paths = paths or []
        if len(paths) == 1 and paths[0].is_dir():
            workspace = paths[0]
        elif paths:
            task["files"] = {p.name: p.read_text() for p in paths}

    async def main() -> int:
        async with connect(url, key) as client:
            if workspace is not None:
                with tempfile.TemporaryDirectory(prefix="phage-submit-") as tmp:
                    archive = Path(tmp) / "workspace.tar.gz"
                    _pack_dir(workspace, archive)
                    with transfer_progress("upload", enabled=not as_json) as progress:
                        extra = {k: v for k, v in task.items() if k not in ("kind", "manifest")}
                        refs = await client.submit_archive(
                            archive, task["manifest"], progress=progress, **extra
                        )
            else:
                refs = await client.submit_many([task])
            ids = [r.id for r in refs]
            if not as_json:
                print(*ids, sep="\n", flush=True)
            if not wait:
                if as_json:
                    emit_json([r.model_dump(mode="json") for r in refs])
                return 0
            final = await wait_for(client, ids, show=not as_json)
            if as_json:
                emit_json([t.model_dump(mode="json") for t in final])
            else:
                console.print(tasks_table(final, title="finished"))
            return 0 if all(t.succeeded for t in final) else 1

    raise typer.Exit(_run(main()))


@app.command()
def status(
    task_id: Annotated[str | None, typer.Argument(help="Task id; omit for the pool summary.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Show a task (state, attempts, result) or the pool."""

    async def main() -> None:
        async with connect(url, key) as client:
            if task_id is None:
                data = await client.status()
                if as_json:
                    emit_json(data.model_dump(mode="json"))
                    return
                console.print(
                    Panel.fit(
                        f"nodes online {data.nodes.online}/{data.nodes.total} · "
                        f"slots busy {data.slots.busy}/{data.slots.total} · "
                        f"queue {data.queue.depth} · tasks {data.tasks}",
                        title="pool",
                    )
                )
                return
            t = await client.get(task_id)
            if as_json:
                emit_json(t.model_dump(mode="json"))
                return
            console.print(tasks_table([t], title=task_id))
            for a in t.attempts or []:
                console.print(
                    f"  attempt {a.id} on {a.node_id[:12]}… ",
                    state_text(a.state),
                    f" {a.error}" if a.error else "",
                )
            result = t.result
            if result is not None and result.stdout_tail:
                console.print(Panel(result.stdout_tail[-2000:], title="stdout (tail)"))
            if result is not None and result.stderr_tail:
                console.print(Panel(result.stderr_tail[-2000:], title="stderr (tail)"))
            for o in result.outputs if result else []:
                console.print(f"  output {o.path} ({o.size} bytes) → {url}{o.url}")

    _run(main())


@app.command()
def tasks(
    state: Annotated[str | None, typer.Option(help="Only this state.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind (job, generate, noop).")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """List recent tasks, newest first."""

    async def main() -> None:
        async with connect(url, key) as client:
            page = await client.list_tasks(state=state, kind=kind, limit=limit)
        if as_json:
            emit_json(page.model_dump(mode="json"))
        else:
            console.print(tasks_table(page.tasks))

    _run(main())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> float:
    """``90``, ``30m``, ``12h``, ``7d`` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise typer.BadParameter("give a duration such as 3600, 30m, 12h or 7d", param_hint=option)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@app.command()
def gc(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Delete tasks finished longer ago than this (e.g. 7d; default: the coordinator's)."
        ),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Delete finished tasks past retention, then every blob nothing refers to (admin)."""
    retention = parse_duration(older_than, "--older-than") if older_than is not None else None

    async def main() -> None:
        async with connect(url, key) as client:
            r = await client.gc(retention)
            console.print(
                f"{r['tasks_deleted']} finished tasks deleted; "
                f"{r['blobs_deleted']} blobs deleted, {r['bytes_freed']} bytes freed"
            )

    _run(main())


nodes_app = typer.Typer(help="List the pool's nodes, or act on one (admin).", no_args_is_help=False)
app.add_typer(nodes_app, name="nodes")


@nodes_app.callback(invoke_without_command=True)
def nodes(
    ctx: typer.Context, as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None
) -> None:
    """List the pool's nodes (state, trust, quarantine, load)."""
    if ctx.invoked_subcommand is not None:
        return

    async def main() -> None:
        async with connect(url, key) as client:
            found = await client.nodes()
        if as_json:
            emit_json([n.model_dump(mode="json") for n in found])
        else:
            console.print(nodes_table(found))

    _run(main())


def _node_action(node_id: str, url: str, key: str | None, action: str, **params: str) -> None:
    async def main() -> None:
        async with connect(url, key) as client:
            node = await client.node_action(node_id, action, **params)
        if isinstance(node, TaskRef):
            console.print(node.id, state_text(node.state))
            return
        console.print(
            node.name or node_id,
            state_text(node.state),
            "quarantined: " + (node.quarantine_reason or "") if node.quarantined else "",
            "draining" if node.draining else "",
            "" if node.trusted else "untrusted",
        )

    _run(main())


@nodes_app.command("remove")
def nodes_remove(node_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Remove a node: its certificate is refused from now on and its work goes elsewhere."""
    _node_action(node_id, url, key, "remove")


@nodes_app.command("quarantine")
def nodes_quarantine(
    node_id: str,
    reason: Annotated[str, typer.Option(help="Shown in the API and dashboard.")] = "quarantined by an admin",
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Quarantine a node: it gets no work until released."""
    _node_action(node_id, url, key, "quarantine", reason=reason)


@nodes_app.command("release")
def nodes_release(node_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Release a node from quarantine."""
    _node_action(node_id, url, key, "release")


@nodes_app.command("approve")
def nodes_approve(
    node_id: str,
    untrusted: Annotated[bool, typer.Option(help="Admit it untrusted: its results are re-verified.")] = False,
    max_jobs: Annotated[int | None, typer.Option(help="Cap on its concurrent jobs.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Approve a pending node (approval mode): it starts taking work."""
    params = {"trusted": "false" if untrusted else "true"}
    if max_jobs is not None:
        params["max_concurrent_jobs"] = str(max_jobs)
    _node_action(node_id, url, key, "approve", **params)


@nodes_app.command("reject")
def nodes_reject(node_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Reject a node for good: it can never rejoin with this identity."""
    _node_action(node_id, url, key, "reject")


@nodes_app.command("drain")
def nodes_drain(
    node_id: str,
    undo: Annotated[bool, typer.Option("--undo", help="Take work again (undrain).")] = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Drain a node: it finishes what it holds and takes no more work."""
    _node_action(node_id, url, key, "undrain" if undo else "drain")


@app.command()
def cancel(task_id: str, as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Cancel a task."""

    async def main() -> None:
        async with connect(url, key) as client:
            t = await client.cancel(task_id)
        if as_json:
            emit_json(t.model_dump(mode="json"))
        else:
            console.print(task_id, state_text(t.state))

    _run(main())


@app.command()
def download(
    task_id: str,
    path: str,
    dest: Annotated[Path | None, typer.Option("-O", help="Where to write it (default: its name).")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Download one output file of a task (streamed to disk, checked against its SHA-256)."""

    async def main() -> None:
        target = dest or Path(Path(path).name)
        async with connect(url, key) as client:
            with transfer_progress(f"download {path}") as progress:
                written = await client.download(task_id, path, target, progress=progress)
        err_console.print(f"wrote {written} ({written.stat().st_size} bytes)")

    _run(main())


@app.command()
def watch(as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Follow the live feed: every task and node state change."""

    async def main() -> None:
        async with connect(url, key) as client:
            async for ev in client.feed():
                if as_json:  # one JSON document per line, for scripts that follow the pool
                    print(json.dumps(ev), flush=True)
                    continue
                kind = ev.get("type")
                if kind in ("task", "node"):
                    extra = " ".join(
                        f"{k}={v}" for k, v in ev.items() if k not in ("type", "id", "state", "ts")
                    )
                    console.print(f"{kind:5} {ev['id'][:24]:24} ", state_text(ev["state"]), f" {extra}")
                else:
                    console.print(f"[dim]{ev}[/]")

    with contextlib.suppress(KeyboardInterrupt):
        _run(main())


@app.command()
def demo(
    nodes_count: Annotated[int, typer.Option("--nodes", help="How many nodes to start.")] = 2,
    keep: Annotated[bool, typer.Option(help="Keep the pool running after the jobs finish.")] = False,
    http_port: Annotated[int, typer.Option(help="HTTP port (0 = any free port).")] = 0,
) -> None:
    """Start a coordinator and nodes on loopback, run sample jobs, show the results."""
    from phage.client.demo import run_demo

    try:
        code = asyncio.run(run_demo(console, nodes=nodes_count, keep=keep, http_port=http_port))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


register_roles(app)
register_ops(app)
register_ai_verbs(app)
register_sharded_verbs(app)
register_train_verbs(app)


def main() -> None:
    """Console-script entry point.

    A crash in native code (gRPC, torch) would otherwise end a long-running coordinator or node
    without a word in its log; with the fault handler on, the Python stacks go to stderr first.
    """
    faulthandler.enable()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
