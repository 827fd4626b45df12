"""PostgreSQL's part of ``phage backup`` / ``phage restore``: ``pg_dump`` and ``pg_restore``.

The dump is taken inside one repeatable-read transaction whose snapshot ``pg_dump`` shares
(``--snapshot``), so the task count in the manifest is the count of the dump itself, even while the
coordinator keeps writing. The password never reaches a command line (where other local users could
read it in the process list): the tools get it through ``PGPASSWORD``. Both tools are looked up on
``PATH`` and then in Debian's ``/usr/lib/postgresql/<version>/bin``, newest first; ``pg_dump`` must
be at least the server's major version, which it checks itself.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phage.errors import Conflict, StoreError

if TYPE_CHECKING:
    import psycopg

INSTALL_HINT = "apt-get install postgresql-client"


def pg_tool(name: str) -> str:
    """The path of ``pg_dump`` or ``pg_restore``; a clear error when neither place has it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version, reverse=True)
    if candidates:
        return candidates[0]
    raise StoreError(
        f"a PostgreSQL backup needs {name} on PATH or in /usr/lib/postgresql/*/bin ({INSTALL_HINT})"
    )


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _libpq(db_url: str) -> tuple[str, dict[str, str]]:
    """``postgresql+asyncpg://u:p@h/db`` → (``postgresql://u@h/db``, the environment carrying ``p``)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _connect(db_url: str) -> psycopg.Connection[Any]:
    try:
        import psycopg
    except ImportError:
        raise StoreError("a PostgreSQL backup needs phage[postgres] (psycopg) installed here") from None
    dsn, env = _libpq(db_url)
    try:
        return psycopg.connect(dsn, password=env.get("PGPASSWORD"), connect_timeout=30)
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach the PostgreSQL database: {str(exc).strip()}") from None


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StoreError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def dump(db_url: str, target: Path) -> int:
    """Write a custom-format dump of the pool's database to ``target``; the number of tasks in it."""
    pg_dump = pg_tool("pg_dump")
    dsn, env = _libpq(db_url)
    from psycopg import IsolationLevel

    with _connect(db_url) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction(), conn.cursor() as cur:
            row = cur.execute("SELECT pg_export_snapshot(), to_regclass('tasks') IS NOT NULL").fetchone()
            assert row is not None
            snapshot, has_tasks = row
            if not has_tasks:
                raise StoreError("the database holds no phage pool (no tasks table): is this its URL?")
            tasks = _count(cur)
            argv = [
                pg_dump,
                "--format=custom",
                "--no-owner",
                f"--snapshot={snapshot}",
                f"--file={target}",
                dsn,
            ]
            _run(argv, env, "pg_dump")  # inside the transaction: the snapshot lives while it is open
    return tasks


def check(dump_file: Path) -> None:
    """Refuse a dump that ``pg_restore`` cannot read (it lists the archive's table of contents)."""
    _run([pg_tool("pg_restore"), "--list", str(dump_file)], dict(os.environ), "reading the database dump")


def holds_pool(db_url: str) -> int | None:
    """Tasks in the database at ``db_url`` if it already holds a phage pool, else None."""
    with _connect(db_url) as conn, conn.cursor() as cur:
        row = cur.execute("SELECT to_regclass('tasks') IS NOT NULL").fetchone()
        return _count(cur) if row is not None and row[0] else None


def _count(cur: psycopg.Cursor[Any]) -> int:
    row = cur.execute("SELECT count(*) FROM tasks").fetchone()
    return 0 if row is None else int(row[0])


def refuse_overwrite(db_url: str, force: bool) -> None:
    """A database that holds a pool is replaced only when asked (``--force``)."""
    existing = holds_pool(db_url)
    if existing is not None and not force:
        raise Conflict(
            f"the database already holds a phage pool ({existing} tasks); stop its coordinator, and pass "
            "--force to replace it with the backup",
            field="database_url",
        )


def restore(db_url: str, dump_file: Path) -> None:
    """Load a dump into the database at ``db_url``, replacing phage's tables, in one transaction."""
    pg_restore = pg_tool("pg_restore")
    dsn, env = _libpq(db_url)
    argv = [
        pg_restore,
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        "--exit-on-error",
        f"--dbname={dsn}",
        str(dump_file),
    ]
    _run(argv, env, "pg_restore")
