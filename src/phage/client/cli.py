"""The ``phage`` command: every role (coordinator, node, demo) and the client verbs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import sys
import tarfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel

from phage import __version__
from phage.client.cli_ai import register as register_ai_verbs
from phage.client.cli_common import (
    DataDirOpt,
    KeyOpt,
    UrlOpt,
    api_key,
    console,
    err_console,
    parse_size,
    run,
)
from phage.client.cli_sharded import register as register_sharded_verbs
from phage.client.cli_train import register as register_train_verbs
from phage.client.render import nodes_table, state_text, tasks_table
from phage.client.sdk import PhageClient

app = typer.Typer(
    name="phage",
    help="Turn machines contributed by many owners into one dependable service for AI work.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def version() -> None:
    """Print phage's version."""
    console.print(__version__)


@app.command()
def coordinator(
    data_dir: DataDirOpt = Path.home() / ".phage",
    http: Annotated[str, typer.Option(help="HTTP listen address host:port.")] = "127.0.0.1:8080",
    grpc: Annotated[str, typer.Option(help="gRPC (mTLS) listen address host:port.")] = "127.0.0.1:9090",
    enroll_port: Annotated[int | None, typer.Option(help="Enrollment port (default: gRPC port + 1).")] = None,
    advertise: Annotated[
        str | None, typer.Option(help="Host nodes should dial (default: the gRPC host).")
    ] = None,
    heartbeat: Annotated[float, typer.Option(help="Heartbeat interval in seconds.")] = 10.0,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="PHAGE_DATABASE_URL",
            help="postgresql://user@host:port/db to share one database between several coordinators "
            "(needs phage[postgres]); default: SQLite in the data directory.",
        ),
    ] = None,
    admission: Annotated[
        str,
        typer.Option(
            envvar="PHAGE_ADMISSION",
            help="Who may join: token (join token, trusted), allowlist (keys in the workers file), "
            "approval (join token, then an admin approves), open (anyone, untrusted).",
        ),
    ] = "token",
    workers_file: Annotated[
        Path | None,
        typer.Option(
            envvar="PHAGE_WORKERS_FILE",
            help="Allowlist mode: a sandrun-style workers.json of node keys, re-read on change "
            "(default: DATA_DIR/workers.json).",
        ),
    ] = None,
    pool_api_open: Annotated[
        bool,
        typer.Option(
            envvar="PHAGE_POOL_API_OPEN",
            help="Serve the sandrun-compatible pool API (/submit, /status, /outputs, /pool) without a key.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a coordinator: queue, placement, node protocol, HTTP API."""
    from phage.coordinator.server import ServerInfo, run_forever
    from phage.coordinator.settings import CoordinatorSettings

    _logging(verbose)
    hh, _, hp = http.rpartition(":")
    gh, _, gp = grpc.rpartition(":")
    settings = CoordinatorSettings(
        data_dir=data_dir,
        http_host=hh,
        http_port=int(hp),
        grpc_host=gh,
        grpc_port=int(gp),
        enroll_port=enroll_port,
        advertise_host=advertise,
        heartbeat_interval_s=heartbeat,
        database_url=database_url,
        admission=admission,  # type: ignore[arg-type]  # pydantic checks the choice
        workers_file=workers_file,
        pool_api_open=pool_api_open,
    )

    def ready(info: ServerInfo) -> None:
        console.print(
            Panel.fit(
                f"[bold]phage coordinator[/] {__version__}\n"
                f"HTTP API   {info.http_url}   (docs: {info.http_url}/docs)\n"
                f"node gRPC  {info.grpc_address} (mTLS)   enrollment {info.enroll_address}\n"
                f"data       {info.data_dir}\n"
                f"admin key  {info.data_dir}/admin-key\n\n"
                f"Join a node with:\n[bold cyan]{info.node_command()}[/]",
                title="ready",
            )
        )

    asyncio.run(run_forever(settings, ready))


def read_join_token(token_file: Path | None) -> str | None:
    """The join token from ``--token-file`` or ``PHAGE_JOIN_TOKEN`` (None: the pool needs none)."""
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {token_file}: {exc.strerror}", param_hint="--token-file"
            ) from None
        if not text:
            raise typer.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return text
    return os.environ.get("PHAGE_JOIN_TOKEN") or None


@app.command()
def node(
    coordinator: Annotated[
        str,
        typer.Option(
            help="Coordinator gRPC address host:port; several replicas as a:9090,b:9090 (or a name "
            "resolving to several): the node uses one and moves to another when it stops answering."
        ),
    ] = "127.0.0.1:9090",
    enroll: Annotated[
        str | None,
        typer.Option(help="Enrollment address, or one per coordinator (default: each port + 1)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="PHAGE_JOIN_TOKEN_FILE",
            help="File holding the join token (or set PHAGE_JOIN_TOKEN); never given on the command line.",
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(hidden=True)] = None,
    ca_fingerprint: Annotated[str | None, typer.Option(help="Pinned CA fingerprint sha256:….")] = None,
    key_dir: Annotated[Path, typer.Option(help="Node identity and certificate directory.")] = (
        Path.home() / ".phage" / "node"
    ),
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    concurrency: Annotated[
        int,
        typer.Option(help="Jobs run at once (slots); the node also holds short tasks queued beside them."),
    ] = 4,
    sandbox: Annotated[
        str | None,
        typer.Option(
            help="Sandbox backend: bwrap|gvisor|none (default: bwrap, and gvisor too for tasks that "
            "require it; gvisor alone where bwrap does not work)."
        ),
    ] = None,
    polled_scratch: Annotated[
        bool,
        typer.Option(
            "--polled-scratch",
            help="Where the kernel cannot cap a workspace's disk (an unprivileged node), accept a "
            "cap the node only polls; a job can overshoot it.",
        ),
    ] = False,
    engine: Annotated[
        str | None, typer.Option(help="Inference engine: transformers|vllm|llamacpp|openai|auto.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model path or id for the engine.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name tasks use for the model.")] = None,
    engine_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server URL (--engine openai).")
    ] = None,
    engine_port: Annotated[
        int | None, typer.Option(help="Port for the vllm/llamacpp server (default: free).")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="Share of GPU memory vLLM may take.")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length (vllm, llamacpp).")] = None,
    engine_command: Annotated[
        str | None, typer.Option(help="Command replacing `vllm` / `llama-server`.")
    ] = None,
    model_memory: Annotated[
        str | None,
        typer.Option(help="Memory a model may use here, e.g. 24GiB (default: free VRAM, or RAM)."),
    ] = None,
    heartbeat: Annotated[float | None, typer.Option(help="Heartbeat interval override (s).")] = None,
    serve_blocks: Annotated[
        str | None,
        typer.Option(help="Serve sharded-model blocks: auto, or a range START:END (END exclusive)."),
    ] = None,
    sharded_model: Annotated[str, typer.Option(help="Serve blocks of this sharded model only.")] = "",
    block_memory: Annotated[
        str | None, typer.Option(help="Memory blocks may use, e.g. 8GiB (default: --model-memory, or RAM).")
    ] = None,
    dataplane: Annotated[
        str, typer.Option(help="host:port where peers reach this node's blocks (port 0: a free one).")
    ] = "127.0.0.1:0",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a node: join the pool, pull work, run it sandboxed."""
    import signal

    from phage.node import NodeAgent, NodeConfig

    _logging(verbose)
    if token is not None:
        raise typer.BadParameter(
            "the join token is not taken on the command line, where process listings show it: "
            "set PHAGE_JOIN_TOKEN or pass --token-file",
            param_hint="--token",
        )
    config = NodeConfig(
        coordinator=coordinator,
        enroll=enroll,
        join_token=read_join_token(token_file),
        ca_fingerprint=ca_fingerprint,
        key_dir=key_dir,
        name=name,
        max_concurrency=concurrency,
        sandbox=sandbox,
        polled_scratch=polled_scratch,
        heartbeat_interval_s=heartbeat,
        engine=engine,
        model=model,
        model_name=model_name,
        engine_url=engine_url,
        engine_port=engine_port,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        engine_command=engine_command,
        model_memory_bytes=parse_size(model_memory, "--model-memory") if model_memory else None,
        serve_blocks=serve_blocks,
        sharded_model=sharded_model,
        block_memory_bytes=parse_size(block_memory, "--block-memory") if block_memory else None,
        dataplane_host=dataplane.rpartition(":")[0] or "127.0.0.1",
        dataplane_port=int(dataplane.rpartition(":")[2] or 0),
    )

    async def main() -> None:
        agent = NodeAgent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        also = [name for name in agent.sandboxes if name != agent.sandbox.name]
        offered = f" (also {', '.join(also)} for tasks that require it)" if also else ""
        err_console.print(
            f"node {agent.node_id} · sandbox [bold]{agent.sandbox.name}[/]{offered} · slots "
            f"{agent.config.max_concurrency} · coordinator {coordinator}"
        )
        await agent.run()

    run(main())


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


def _pack_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted(path.rglob("*")):
            if item.is_symlink():
                raise typer.BadParameter(f"{item} is a symlink; workspaces may not contain links")
            tar.add(item, arcname=item.relative_to(path).as_posix(), recursive=False)
    return buf.getvalue()


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
    wait: Annotated[bool, typer.Option(help="Wait for the task to finish.")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Submit a job: a workspace (directory or files) and how to run it."""
    task: dict[str, Any]
    archive: bytes | None = None
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
            archive = _pack_dir(paths[0])
        elif paths:
            task["files"] = {p.name: p.read_text() for p in paths}

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            if archive is not None:
                t = await client.submit_archive(
                    archive, task.pop("manifest"), **{k: v for k, v in task.items() if k != "kind"}
                )
            else:
                t = await client.submit(task)
            ids = [t["id"]] if "id" in t else [x["id"] for x in t["tasks"]]
            for tid in ids:
                console.print(tid)
            if wait:
                for tid in ids:
                    while (cur := await client.get(tid))["state"] not in ("verified", "failed", "cancelled"):
                        await asyncio.sleep(0.3)
                    console.print(tasks_table([cur], title=tid))

    run(main())


@app.command()
def status(
    task_id: Annotated[str | None, typer.Argument(help="Task id; omit for the pool summary.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Show a task (state, attempts, result) or the pool."""

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            if task_id is None:
                data = await client.status()
                console.print_json(json.dumps(data)) if as_json else console.print(
                    Panel.fit(
                        f"nodes online {data['nodes']['online']}/{data['nodes']['total']} · "
                        f"slots busy {data['slots']['busy']}/{data['slots']['total']} · "
                        f"queue {data['queue']['depth']} · tasks {data['tasks']}",
                        title="pool",
                    )
                )
                return
            t = await client.get(task_id)
            if as_json:
                console.print_json(json.dumps(t))
                return
            console.print(tasks_table([t], title=task_id))
            for a in t.get("attempts", []):
                console.print(
                    f"  attempt {a['id']} on {a['node_id'][:12]}… ",
                    state_text(a["state"]),
                    f" {a['error']}" if a["error"] else "",
                )
            result = t.get("result") or {}
            if result.get("stdout_tail"):
                console.print(Panel(result["stdout_tail"][-2000:], title="stdout (tail)"))
            if result.get("stderr_tail"):
                console.print(Panel(result["stderr_tail"][-2000:], title="stderr (tail)"))
            for o in result.get("outputs", []):
                console.print(f"  output {o['path']} ({o['size']} bytes) → {url}{o['url']}")

    run(main())


@app.command()
def tasks(
    state: Annotated[str | None, typer.Option(help="Only this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """List recent tasks."""

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            console.print(tasks_table((await client.list_tasks(state=state, limit=limit))["tasks"]))

    run(main())


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
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Delete finished tasks past retention, then every blob nothing refers to (admin)."""
    retention = parse_duration(older_than, "--older-than") if older_than is not None else None

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            r = await client.gc(retention)
            console.print(
                f"{r['tasks_deleted']} finished tasks deleted; "
                f"{r['blobs_deleted']} blobs deleted, {r['bytes_freed']} bytes freed"
            )

    run(main())


nodes_app = typer.Typer(help="List the pool's nodes, or act on one (admin).", no_args_is_help=False)
app.add_typer(nodes_app, name="nodes")


@nodes_app.callback(invoke_without_command=True)
def nodes(ctx: typer.Context, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
    """List the pool's nodes (state, trust, quarantine, load)."""
    if ctx.invoked_subcommand is not None:
        return

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            console.print(nodes_table(await client.nodes()))

    run(main())


def _node_action(node_id: str, url: str, key: str | None, action: str, **params: str) -> None:
    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            node = await client.node_action(node_id, action, **params)
            console.print(
                node.get("name", node_id),
                state_text(node.get("state", "")),
                "quarantined: " + node["quarantine_reason"] if node.get("quarantined") else "",
                "draining" if node.get("draining") else "",
                "" if node.get("trusted", True) else "untrusted",
            )

    run(main())


@nodes_app.command("remove")
def nodes_remove(node_id: str, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
    """Remove a node: its certificate is refused from now on and its work goes elsewhere."""
    _node_action(node_id, url, key, "remove")


@nodes_app.command("quarantine")
def nodes_quarantine(
    node_id: str,
    reason: Annotated[str, typer.Option(help="Shown in the API and dashboard.")] = "quarantined by an admin",
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Quarantine a node: it gets no work until released."""
    _node_action(node_id, url, key, "quarantine", reason=reason)


@nodes_app.command("release")
def nodes_release(node_id: str, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
    """Release a node from quarantine."""
    _node_action(node_id, url, key, "release")


@nodes_app.command("approve")
def nodes_approve(
    node_id: str,
    untrusted: Annotated[bool, typer.Option(help="Admit it untrusted: its results are re-verified.")] = False,
    max_jobs: Annotated[int | None, typer.Option(help="Cap on its concurrent jobs.")] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Approve a pending node (approval mode): it starts taking work."""
    params = {"trusted": "false" if untrusted else "true"}
    if max_jobs is not None:
        params["max_concurrent_jobs"] = str(max_jobs)
    _node_action(node_id, url, key, "approve", **params)


@nodes_app.command("reject")
def nodes_reject(node_id: str, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
    """Reject a node for good: it can never rejoin with this identity."""
    _node_action(node_id, url, key, "reject")


@nodes_app.command("drain")
def nodes_drain(
    node_id: str,
    undo: Annotated[bool, typer.Option("--undo", help="Take work again (undrain).")] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Drain a node: it finishes what it holds and takes no more work."""
    _node_action(node_id, url, key, "undrain" if undo else "drain")


@app.command()
def cancel(task_id: str, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
    """Cancel a task."""

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            t = await client.cancel(task_id)
            console.print(task_id, state_text(t["state"]))

    run(main())


@app.command()
def download(
    task_id: str,
    path: str,
    dest: Annotated[Path | None, typer.Option("-O")] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
) -> None:
    """Download one output file of a task."""

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            data = await client.download(task_id, path)
            target = dest or Path(Path(path).name)
            target.write_bytes(data)
            err_console.print(f"wrote {target} ({len(data)} bytes)")

    run(main())


@app.command()
def watch(url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None) -> None:
    """Follow the live feed: every task and node state change."""

    async def main() -> None:
        async with PhageClient(url, api_key(key)) as client:
            async for ev in client.feed():
                kind = ev.get("type")
                if kind in ("task", "node"):
                    extra = " ".join(
                        f"{k}={v}" for k, v in ev.items() if k not in ("type", "id", "state", "ts")
                    )
                    console.print(f"{kind:5} {ev['id'][:24]:24} ", state_text(ev["state"]), f" {extra}")
                else:
                    console.print(f"[dim]{ev}[/]")

    with contextlib.suppress(KeyboardInterrupt):
        run(main())


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


register_ai_verbs(app)
register_sharded_verbs(app)
register_train_verbs(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
