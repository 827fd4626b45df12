"""``phage coordinator``, ``phage node`` and ``phage config``: options generated from the settings models.

Each role's flags are made from its model's fields (:class:`~phage.coordinator.settings.CoordinatorSettings`,
:class:`~phage.node.config.NodeConfig`), so every option has a flag, a ``PHAGE_*`` variable and a file
key, and ``--help`` shows them all with their defaults. A flag's default is "not given" (None): only
flags typed on the command line override the environment and the file (see :mod:`phage.config`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from phage import __version__
from phage.config import (
    ConfigError,
    Role,
    default_config_path,
    default_text,
    description,
    field_type,
    resolve,
)
from phage.coordinator.settings import CoordinatorSettings
from phage.logs import setup as log_setup
from phage.node.config import NodeConfig

console = Console()
err_console = Console(stderr=True)


@dataclass(frozen=True)
class RoleCommand:
    """A role and the flags that set two keys at once (``--http host:port``)."""

    role: Role
    pairs: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Flag → (host key, port key)."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Key → why its (hidden) flag is refused: a secret never taken on the command line."""

    def flag(self, key: str) -> str:
        """The flag that sets ``key``."""
        for flag, keys in self.pairs.items():
            if key in keys:
                return flag
        return self.role.flag(key)


COORDINATOR = RoleCommand(
    Role(
        "coordinator",
        CoordinatorSettings,
        "PHAGE_",
        {"heartbeat_interval_s": "--heartbeat", "advertise_host": "--advertise"},
    ),
    pairs={"--http": ("http_host", "http_port"), "--grpc": ("grpc_host", "grpc_port")},
)
NODE = RoleCommand(
    Role(
        "node",
        NodeConfig,
        "PHAGE_NODE_",
        {
            "join_token": "--token",
            "join_token_file": "--token-file",
            "max_concurrency": "--concurrency",
            "heartbeat_interval_s": "--heartbeat",
            "model_memory_bytes": "--model-memory",
            "block_memory_bytes": "--block-memory",
        },
        envs={"join_token": "PHAGE_JOIN_TOKEN", "join_token_file": "PHAGE_JOIN_TOKEN_FILE"},
    ),
    pairs={"--dataplane": ("dataplane_host", "dataplane_port")},
    refused={
        "join_token": "the join token is not taken on the command line, where process listings show "
        "it: set PHAGE_JOIN_TOKEN or pass --token-file"
    },
)
ROLES = (COORDINATOR, NODE)


def _metavar(model: type[BaseModel], key: str) -> str:
    annotation = model.model_fields[key].annotation
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    if get_origin(args[0]) is Literal:
        return "[" + "|".join(str(a) for a in get_args(args[0])) + "]"
    return field_type(model, key).split(" ")[0].upper()


def _help(cmd: RoleCommand, keys: tuple[str, ...]) -> str:
    role = cmd.role
    text = description(role.model, keys[0]).replace("``", "")
    default = ":".join(default_text(role.model, k).strip("'") for k in keys)
    env = ", ".join(role.env(k) for k in keys)
    return escape(f"{text} [default: {default}; env: {env}]")


def _parameters(cmd: RoleCommand) -> list[inspect.Parameter]:
    model = cmd.role.model
    params: list[inspect.Parameter] = []
    paired = {k for keys in cmd.pairs.values() for k in keys}
    for flag, keys in cmd.pairs.items():
        opt = typer.Option(flag, metavar="HOST:PORT", help=_help(cmd, keys), show_default=False)
        params.append(_param(flag.lstrip("-"), Annotated[str | None, opt]))
    for key, info in model.model_fields.items():
        if key in paired:
            continue
        flag = cmd.flag(key)
        if key in cmd.refused:
            opt = typer.Option(flag, hidden=True)
            params.append(_param(key, Annotated[str | None, opt]))
        elif info.annotation is bool:
            opt = typer.Option(f"{flag}/--no-{flag[2:]}", help=_help(cmd, (key,)), show_default=False)
            params.append(_param(key, Annotated[bool | None, opt]))
        else:
            opt = typer.Option(flag, metavar=_metavar(model, key), help=_help(cmd, (key,)))
            params.append(_param(key, Annotated[str | None, opt]))
    config_opt = typer.Option(
        "--config",
        envvar="PHAGE_CONFIG",
        help=escape(f"TOML configuration file [default: {default_config_path()} if it exists]"),
        show_default=False,
    )
    params.append(_param("config", Annotated[Path | None, config_opt]))
    print_opt = typer.Option(
        "--print-config", help="Print the settings in force and where each came from, then exit."
    )
    params.append(_param("print_config", Annotated[bool, print_opt], False))
    params.append(_param("verbose", Annotated[bool, typer.Option("--verbose", "-v")], False))
    return params


def _param(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _flags(cmd: RoleCommand, given: dict[str, Any]) -> dict[str, Any]:
    """Command-line values by key; ``--http h:p`` becomes two keys."""
    flags: dict[str, Any] = {}
    for flag, (host_key, port_key) in cmd.pairs.items():
        value = given.pop(flag.lstrip("-"), None)
        if value is not None:
            host, sep, port = str(value).rpartition(":")
            if not sep:
                raise ConfigError(f"{flag} {value!r} is not HOST:PORT", field=port_key)
            flags[host_key], flags[port_key] = host.strip("[]"), port
    flags.update(given)
    return flags


def role_command(
    app: typer.Typer, cmd: RoleCommand, run: Callable[[Any], None], summary: str
) -> Callable[..., None]:
    """Register ``phage <role>``: resolve the layers, then ``run(settings)``."""

    def command(**given: Any) -> None:
        config: Path | None = given.pop("config")
        print_config: bool = given.pop("print_config")
        verbose: bool = given.pop("verbose")
        for key, why in cmd.refused.items():
            if given.pop(key, None) is not None:
                raise typer.BadParameter(why, param_hint=cmd.flag(key))
        try:
            resolved = resolve(cmd.role, flags=_flags(cmd, given), config=config)
        except ConfigError as exc:
            err_console.print(f"[bold red]configuration error[/]: {escape(exc.message)}")
            raise typer.Exit(2) from None
        log_setup(verbose=verbose, fmt=getattr(resolved.settings, "log_format", "text"))
        if print_config:
            values = resolved.settings.model_dump(mode="json")
            out = {k: {"value": values[k], "source": resolved.sources[k]} for k in values}
            print(json.dumps(out, indent=1))
            return
        run(resolved.settings)

    params = _parameters(cmd)
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = summary
    app.command(cmd.role.name)(command)
    return command


def run_coordinator(settings: CoordinatorSettings) -> None:
    """Serve until SIGINT/SIGTERM; print the paste-ready join line once listening."""
    from phage.coordinator.server import ServerInfo, run_forever

    def ready(info: ServerInfo) -> None:
        if settings.log_format == "json":  # a log pipeline gets the addresses as a record, not a banner
            logging.getLogger("phage.coordinator").info(
                "ready",
                extra={
                    "http_url": info.http_url,
                    "grpc_address": info.grpc_address,
                    "enroll_address": info.enroll_address,
                    "ca_fingerprint": info.ca_fingerprint,
                    "node_command": info.node_command(),
                },
            )
            return
        console.print(
            f"[bold]phage coordinator[/] {__version__} ready\n"
            f"  HTTP API   {info.http_url}   (docs: {info.http_url}/docs)\n"
            f"  node gRPC  {info.grpc_address} (mutual TLS)   enrollment {info.enroll_address}\n"
            f"  data       {info.data_dir}\n"
            f"  admin key  {info.data_dir}/admin-key\n\n"
            "Join a node with:\n",
            highlight=False,
        )
        # No panel and no wrapping by rich: the join line must survive a copy and paste intact.
        print(info.node_command_lines(), flush=True)

    from phage.client.cli_common import run_reporting

    run_reporting(run_forever(settings, ready))


def run_node(config: NodeConfig) -> None:
    """Join the pool and work until SIGINT/SIGTERM."""
    import signal

    from phage.client.cli_common import run_reporting
    from phage.node import NodeAgent

    config = with_join_token(config)

    async def main() -> None:
        agent = NodeAgent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        also = [name for name in agent.sandboxes if name != agent.sandbox.name]
        if config.log_format == "json":
            logging.getLogger("phage.node").info(
                "node %s · sandbox %s · slots %d · coordinator %s",
                agent.node_id,
                agent.sandbox.name,
                config.max_concurrency,
                config.coordinator,
                extra={"node_id": agent.node_id, "sandbox": agent.sandbox.name, "also": also},
            )
        else:  # fastjobs' bench and the tests read this line
            offered = f" (also {', '.join(also)} for tasks that require it)" if also else ""
            warm = f", up to {agent.warm.size} kept warm" if agent.warm is not None else ""
            err_console.print(
                f"node {agent.node_id} · sandbox [bold]{agent.sandbox.name}[/]{warm}{offered} · slots "
                f"{config.max_concurrency} · coordinator {escape(config.coordinator)}",
                highlight=False,
            )
        await agent.run()

    run_reporting(main())


def with_join_token(config: NodeConfig) -> NodeConfig:
    """The config with the join token read from ``join_token_file`` when no token is set directly."""
    path = config.join_token_file
    if config.join_token or path is None:
        return config
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--token-file") from None
    if not text:
        raise typer.BadParameter(f"{path} is empty", param_hint="--token-file")
    return config.model_copy(update={"join_token": text})


def register(app: typer.Typer) -> None:
    """Add ``phage coordinator``, ``phage node`` and ``phage config`` to the main app."""
    role_command(
        app, COORDINATOR, run_coordinator, "Run a coordinator: queue, placement, node protocol, HTTP API."
    )
    role_command(app, NODE, run_node, "Run a node: join the pool, pull work, run it sandboxed.")
    config_app = typer.Typer(help="The configuration file and its reference.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @app.command()
    def doctor(
        config: Annotated[Path | None, typer.Option("--config", envvar="PHAGE_CONFIG")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Check this machine for a coordinator or a node, and say what to fix.

        Sandboxes, cgroups, GPUs (NVML), engines, extras, ports, clock and disk; exits 1 when
        something would stop a role from running.
        """
        from rich.table import Table

        from phage.client.doctor import Context, Finding, Level, diagnose

        findings: list[Finding] = []
        ports: list[tuple[str, str, int]] = []
        dirs: list[Path] = []
        try:
            coord = resolve(COORDINATOR.role, flags={}, config=config).settings
            node = resolve(NODE.role, flags={}, config=config).settings
        except ConfigError as exc:
            findings.append(Finding("configuration", Level.FAIL, exc.message, "fix the key it names"))
        else:
            assert isinstance(coord, CoordinatorSettings) and isinstance(node, NodeConfig)
            ports = [
                ("HTTP API", coord.http_host, coord.http_port),
                ("node gRPC", coord.grpc_host, coord.grpc_port),
                ("enrollment", coord.grpc_host, coord.enrollment_port),
            ]
            dirs = [coord.data_dir, node.key_dir]
        findings += diagnose(Context(ports=tuple(ports), dirs=tuple(dirs)))
        if as_json:
            print(json.dumps([{**f.__dict__, "level": f.level.value} for f in findings], indent=1))
        else:
            table = Table("check", "", "detail", "fix")
            style = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}
            for f in findings:
                table.add_row(
                    f.check, f"[{style[f.level]}]{f.level.value}[/]", escape(f.detail), escape(f.fix)
                )
            console.print(table)
        if any(f.level is Level.FAIL for f in findings):
            raise typer.Exit(1)

    @config_app.command("reference")
    def config_reference() -> None:
        """Print the reference of every option (the source of docs/configuration.md)."""
        print(reference_markdown(), end="")

    @config_app.command("path")
    def config_path_cmd() -> None:
        """Print where phage looks for its configuration file by default."""
        print(default_config_path())


def reference_markdown() -> str:
    """``docs/configuration.md``, generated from the settings models (a test keeps the two equal)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `phage config reference > docs/configuration.md`; do not edit by hand. -->",
        "",
        "Every option of `phage coordinator` and `phage node` can be set in four places; the first that",
        "sets it wins:",
        "",
        "1. a command-line flag (`--http-port`-style, shown below);",
        "2. an environment variable (`PHAGE_*` for the coordinator, `PHAGE_NODE_*` for nodes);",
        "3. the configuration file, a TOML file with a `[coordinator]` and a `[node]` table;",
        "4. the default.",
        "",
        "The file is the one given by `--config PATH` (or `PHAGE_CONFIG`); without either, phage reads",
        "`$XDG_CONFIG_HOME/phage/phage.toml` (`~/.config/phage/phage.toml`) if it exists. An unknown",
        "table or key, or a value of the wrong type, stops the command with an error naming the key",
        "and where it was set. Sizes (`*_bytes`) may be written `64MiB` or `2GB`.",
        "`phage coordinator --print-config` (or `phage node --print-config`) prints the settings in",
        "force and the layer each came from.",
        "",
        "```toml",
        "[coordinator]",
        'http_host = "0.0.0.0"',
        "http_port = 8080",
        "min_quorum = 2",
        'max_workspace_bytes = "128MiB"',
        "",
        "[node]",
        'coordinator = "pool.example.org:9090"',
        "max_concurrency = 8",
        "```",
    ]
    for cmd in ROLES:
        role = cmd.role
        out += ["", f"## `[{role.name}]` — `phage {role.name}`", ""]
        out += ["| key | flag | environment | type | default | meaning |", "|---|---|---|---|---|---|"]
        for key in role.model.model_fields:
            cells = [
                f"`{key}`",
                "(none)" if key in cmd.refused else f"`{cmd.flag(key)}`",
                f"`{role.env(key)}`",
                field_type(role.model, key),
                f"`{default_text(role.model, key)}`",
                description(role.model, key).replace("|", "\\|"),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
