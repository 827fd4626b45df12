"""A throwaway PostgreSQL server for tests and benchmarks, from the operating system's package.

One server per test session (or benchmark run), a fresh database per test. It runs
from the binaries of Debian's ``postgresql`` package (``initdb``, ``pg_ctl``; on
Debian they live in ``/usr/lib/postgresql/<version>/bin``, which is searched when
they are not on ``PATH``). ``initdb`` refuses to run as root, so as root the server
runs as the ``postgres`` user, in a temporary directory that user owns, with its
unix socket in that directory and TCP only on 127.0.0.1 at a free port. Durability
settings are off (``fsync``, ``synchronous_commit``): a test server trades crash
safety for speed; a clean stop (:meth:`PostgresServer.stop`) still keeps every
committed row, which the outage tests rely on.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from phage.testing import free_port

SERVER_USER = "postgres"


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; raises if PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (scripts/setup.sh does)")


def postgres_available() -> bool:
    """True when a server can be started here."""
    try:
        postgres_bin_dir()
    except RuntimeError:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, started and stopped with ``pg_ctl``."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bin = postgres_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="phage-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        self._serial = 0

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log[-2000:]}")

    def init(self) -> PostgresServer:
        """Create the cluster (trust authentication: it listens on loopback only)."""
        if self._as_root:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", SERVER_USER, "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> PostgresServer:
        """Start (or restart after :meth:`stop`) on the same port; returns once it accepts connections."""
        if not self.data.exists():
            self.init()
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.root}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
            ]
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, commit nothing more, shut down cleanly)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def pid(self) -> int:
        """The server's main process (its backends are its children), while it runs."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        """Stop and delete everything."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for one database on this server."""
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "phage") -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        self._serial += 1
        name = f"{prefix}_{os.getpid()}_{self._serial}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')  # name is ours: digits and prefix
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
