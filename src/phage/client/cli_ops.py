"""Day-two verbs on the coordinator's machine: ``phage backup`` and ``phage restore``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from phage.client.cli_common import console, emit_json, err_console
from phage.client.cli_roles import COORDINATOR
from phage.config import resolve
from phage.coordinator.settings import CoordinatorSettings
from phage.errors import PhageError

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", envvar="PHAGE_CONFIG", help="TOML configuration file.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Coordinator data directory [default: as phage coordinator resolves it]."
    ),
]


def _settings(config: Path | None, data_dir: Path | None) -> CoordinatorSettings:
    settings = resolve(COORDINATOR.role, flags={"data_dir": data_dir}, config=config).settings
    assert isinstance(settings, CoordinatorSettings)
    return settings


def _fail(exc: PhageError) -> typer.Exit:
    err_console.print(f"[bold red]error[/]: {escape(exc.message)}")
    return typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``phage backup`` and ``phage restore``."""

    @app.command()
    def backup(
        out: Annotated[Path, typer.Argument(help="Archive to write (.tar.gz, mode 0600).")],
        data_dir: DataDirOpt = None,
        config: ConfigOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Back up a coordinator, running or not: database (consistent snapshot), CA, secrets, blobs."""
        from phage.coordinator.backup import backup as make_backup

        try:
            settings = _settings(config, data_dir)
            report = make_backup(settings.data_dir, settings.db_url, out)
        except PhageError as exc:
            raise _fail(exc) from None
        summary = {
            "path": str(report.path),
            "database": report.database,
            "tasks": report.tasks,
            "blobs": report.blobs,
            "bytes": report.bytes,
        }
        if as_json:
            emit_json(summary)
        else:
            console.print(
                f"backed up {report.tasks} tasks, {report.blobs} blobs and the CA to {report.path} "
                f"({report.bytes:,} bytes); it holds the CA key: store it like the data directory"
            )

    @app.command()
    def restore(
        archive: Annotated[Path, typer.Argument(help="An archive made by phage backup.")],
        data_dir: DataDirOpt = None,
        config: ConfigOpt = None,
        force: Annotated[
            bool, typer.Option("--force", help="Replace the state of an existing (stopped) coordinator.")
        ] = False,
        check: Annotated[
            bool, typer.Option("--check", help="Only verify the archive; change nothing.")
        ] = False,
    ) -> None:
        """Restore a backup into a stopped coordinator's data directory (every member checked first)."""
        from phage.coordinator.backup import restore as put_back
        from phage.coordinator.backup import verify

        try:
            if check:
                manifest = verify(archive)
                console.print(f"{archive}: intact ({manifest['tasks']} tasks, {manifest['blobs']} blobs)")
                return
            settings = _settings(config, data_dir)
            manifest = put_back(archive, settings.data_dir, settings.db_url, force=force)
        except PhageError as exc:
            raise _fail(exc) from None
        console.print(
            f"restored {manifest['tasks']} tasks and {manifest['blobs']} blobs into {settings.data_dir}; "
            "start the coordinator: its nodes reconnect with their certificates"
        )
