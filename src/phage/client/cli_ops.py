"""Day-two verbs on the coordinator's machine: ``phage backup`` and ``phage restore``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from phage.client import _calls as api
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
)
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


DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="The coordinator's database: sqlite+aiosqlite:///… or postgresql+asyncpg://… "
        "[default: as phage coordinator resolves it; SQLite in the data directory]. "
        "PostgreSQL needs pg_dump/pg_restore (postgresql-client) at least the server's version.",
    ),
]


def _settings(config: Path | None, data_dir: Path | None, database_url: str | None) -> CoordinatorSettings:
    flags = {"data_dir": data_dir, "database_url": database_url}
    settings = resolve(COORDINATOR.role, flags=flags, config=config).settings
    assert isinstance(settings, CoordinatorSettings)
    return settings


def _fail(exc: PhageError) -> typer.Exit:
    err_console.print(f"[bold red]error[/]: {escape(exc.message)}")
    return typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``phage backup``, ``phage restore`` and ``phage workloads``."""
    register_workloads(app)

    @app.command()
    def backup(
        out: Annotated[Path, typer.Argument(help="Archive to write (.tar.gz, mode 0600).")],
        data_dir: DataDirOpt = None,
        database_url: DatabaseOpt = None,
        config: ConfigOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Back up a coordinator, running or not: database (consistent snapshot), CA, secrets, blobs."""
        from phage.coordinator.backup import backup as make_backup

        try:
            settings = _settings(config, data_dir, database_url)
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
        database_url: DatabaseOpt = None,
        config: ConfigOpt = None,
        force: Annotated[
            bool,
            typer.Option(
                "--force",
                help="Replace the state (data directory, database) of an existing, stopped coordinator.",
            ),
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
            settings = _settings(config, data_dir, database_url)
            manifest = put_back(archive, settings.data_dir, settings.db_url, force=force)
        except PhageError as exc:
            raise _fail(exc) from None
        console.print(
            f"restored {manifest['tasks']} tasks and {manifest['blobs']} blobs into {settings.data_dir}; "
            "start the coordinator: its nodes reconnect with their certificates"
        )


def register_workloads(app: typer.Typer) -> None:
    """Add ``phage workloads list|approve|revoke|digest``."""
    workloads = typer.Typer(
        help="Approved workloads: the code a pool may run when it runs approved code only."
    )
    app.add_typer(workloads, name="workloads")

    @workloads.command("list")
    def workloads_list(as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
        """Approved workloads, and whether this pool runs only those."""

        async def main() -> None:
            async with connect(url, key) as client:
                listed = await client.call(api.list_workloads())
            if as_json:
                emit_json(listed.model_dump(mode="json"))
                return
            table = Table("digest", "name", "approved", "by")
            for w in listed.workloads:
                when = (
                    ""
                    if w.approved_at is None
                    else time.strftime("%Y-%m-%d %H:%M", time.localtime(w.approved_at))
                )
                table.add_row(w.digest, escape(w.name), when, escape(w.approved_by))
            console.print(table)
            rule = (
                "only approved workloads" if listed.enforced else "any workload (approvals are not enforced)"
            )
            console.print(f"this pool runs {rule}")

        run_reporting(main())

    @workloads.command("approve")
    def workloads_approve(
        digest: Annotated[
            str, typer.Argument(help="sha256:… as a refusal or `phage workloads digest` gives it.")
        ],
        name: Annotated[str, typer.Option(help="What it is, for the list.")] = "",
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Approve a workload (admin): tasks running this code are accepted from now on."""

        async def main() -> None:
            async with connect(url, key) as client:
                await client.call(api.approve_workload(digest, name))
            console.print(f"{digest} approved")

        run_reporting(main())

    @workloads.command("revoke")
    def workloads_revoke(digest: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
        """Withdraw an approval (admin); tasks already queued still run."""

        async def main() -> None:
            async with connect(url, key) as client:
                await client.call(api.revoke_workload(digest))
            console.print(f"{digest} no longer approved")

        run_reporting(main())

    @workloads.command("digest")
    def workloads_digest(
        task_file: Annotated[Path, typer.Argument(help="A task as JSON (the body of POST /api/tasks).")],
        url: UrlOpt = DEFAULT_URL,
        key: KeyOpt = None,
    ) -> None:
        """Print the workload digest of a task without submitting it (to ask an admin to approve it)."""
        import json

        task = json.loads(task_file.read_text())

        async def main() -> None:
            async with connect(url, key) as client:
                got = await client.call(api.workload_digest(task))
            print(got.digest or "(no workload: this task runs no code of yours)")

        run_reporting(main())
