"""``phage backup`` / ``phage restore``: the database, the CA, the secrets and the blobs in one archive.

Online and consistent: SQLite is copied with its backup API (a transactionally consistent snapshot
while the coordinator keeps writing; WAL included), PostgreSQL with ``pg_dump`` in one snapshot
(:mod:`phage.coordinator.backup_pg`), restored with ``pg_restore`` in one transaction. Blobs are copied
after the database snapshot: they are immutable and written before any row names them, so every
blob the snapshot references is already on disk. The archive carries a manifest with the SHA-256
of every member, and blobs are named by their own digest, so ``restore`` checks everything it
writes before a coordinator ever reads it.

The archive holds the CA's private key and the admin key: it is written with mode 0600 and should
be stored like the data directory itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phage import __version__
from phage.coordinator import backup_pg
from phage.errors import Conflict, InvalidInput, StoreError

FORMAT = 1
SECRETS = ("admin-key", "join-token", "workers.json", "approved-workloads.json")
PKI = ("pki/ca.pem", "pki/ca-key.pem")


@dataclass(frozen=True)
class BackupReport:
    """What an archive holds."""

    path: Path
    database: str
    tasks: int
    blobs: int
    bytes: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sqlite_path(db_url: str) -> Path:
    return Path(db_url.split(":///", 1)[1])


def _snapshot_database(db_url: str, into: Path) -> tuple[str, Path, int]:
    """A consistent copy of the database in ``into``: (kind, file, task count)."""
    if db_url.startswith("sqlite"):
        source = _sqlite_path(db_url)
        if not source.is_file():
            raise StoreError(f"no database at {source}: is this the coordinator's data directory?")
        target = into / "phage.db"
        src = sqlite3.connect(str(source), timeout=30)
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)  # one consistent snapshot, even while the coordinator writes
            tasks = int(dst.execute("SELECT count(*) FROM tasks").fetchone()[0])
        finally:
            dst.close()
            src.close()
        return "sqlite", target, tasks
    if db_url.startswith("postgres"):
        target = into / "phage.pgdump"
        return "postgresql", target, backup_pg.dump(db_url, target)
    raise InvalidInput(f"cannot back up a database at {db_url.split(':', 1)[0]}", field="database_url")


def backup(data_dir: Path, db_url: str, out: Path) -> BackupReport:
    """Write an archive of a (possibly running) coordinator's state to ``out`` (mode 0600)."""
    data_dir = data_dir.expanduser().resolve()
    if not (data_dir / "pki" / "ca-key.pem").is_file():
        raise StoreError(f"{data_dir} holds no coordinator CA: not a coordinator data directory")
    files: dict[str, str] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    blobs = 0
    with tempfile.TemporaryDirectory(prefix="phage-backup-") as tmp, os.fdopen(fd, "wb") as raw:
        kind, snapshot, tasks = _snapshot_database(db_url, Path(tmp))
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:

            def add(path: Path, name: str) -> None:
                files[name] = _sha256_file(path)
                tar.add(path, arcname=name, recursive=False)

            add(snapshot, f"database/{snapshot.name}")
            for name in (*PKI, *SECRETS):
                if (data_dir / name).is_file():
                    add(data_dir / name, name)
            blob_root = data_dir / "blobs"
            for blob in sorted(blob_root.glob("??/*")) if blob_root.is_dir() else []:
                with contextlib.suppress(FileNotFoundError):  # removed by retention since the listing
                    tar.add(blob, arcname=f"blobs/{blob.parent.name}/{blob.name}", recursive=False)
                    blobs += 1
            manifest = {
                "format": FORMAT,
                "phage": __version__,
                "created_at": time.time(),
                "database": kind,
                "tasks": tasks,
                "blobs": blobs,
                "files": files,
            }
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    partial.replace(out)
    return BackupReport(out, kind, tasks, blobs, out.stat().st_size)


def read_manifest(archive: Path) -> dict[str, Any]:
    """The archive's manifest (checks that it is a phage backup)."""
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile("manifest.json") if "manifest.json" in tar.getnames() else None
        if member is None:
            raise InvalidInput(f"{archive} is not a phage backup (no manifest.json)", field="archive")
        manifest: dict[str, Any] = json.loads(member.read())
    if manifest.get("format") != FORMAT:
        raise InvalidInput(
            f"{archive}: backup format {manifest.get('format')} is not {FORMAT}", field="archive"
        )
    return manifest


@contextlib.contextmanager
def _unpacked(archive: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The archive unpacked into a temporary directory and checked member by member."""
    manifest = read_manifest(archive)
    with tempfile.TemporaryDirectory(prefix="phage-restore-") as tmp:
        root = Path(tmp)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")  # no links out, no absolute paths, no devices
        for name, digest in manifest["files"].items():
            if not (root / name).is_file() or _sha256_file(root / name) != digest:
                raise StoreError(f"{archive}: {name} is missing or does not match its SHA-256")
        for blob in (root / "blobs").glob("??/*") if (root / "blobs").is_dir() else []:
            if _sha256_file(blob) != blob.name:
                raise StoreError(f"{archive}: blob {blob.name} does not match its digest")
        if manifest["database"] == "sqlite":
            db = sqlite3.connect(str(root / "database" / "phage.db"))
            try:
                verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                db.close()
            if verdict != "ok":
                raise StoreError(f"{archive}: the database fails its integrity check: {verdict}")
        else:
            backup_pg.check(root / "database" / "phage.pgdump")
        yield root, manifest


def verify(archive: Path) -> dict[str, Any]:
    """Check an archive completely without restoring it; its manifest."""
    with _unpacked(archive) as (_, manifest):
        return manifest


def restore(archive: Path, data_dir: Path, db_url: str, *, force: bool = False) -> dict[str, Any]:
    """Put an archive back into ``data_dir`` (and the database); the coordinator must be stopped."""
    data_dir = data_dir.expanduser().resolve()
    existing = [p for p in ("pki/ca-key.pem", "phage.db") if (data_dir / p).exists()]
    if existing and not force:
        raise Conflict(
            f"{data_dir} already holds a coordinator ({', '.join(existing)}); stop it, and pass --force "
            "to replace its state with the backup",
            field="data_dir",
        )
    with _unpacked(archive) as (root, manifest):
        if manifest["database"] == "sqlite" and not db_url.startswith("sqlite"):
            raise InvalidInput(
                "this backup holds a SQLite database; restore it with SQLite", field="database_url"
            )
        if manifest["database"] == "postgresql":
            if not db_url.startswith("postgres"):
                raise InvalidInput(
                    "this backup holds a PostgreSQL database; restore it into PostgreSQL "
                    "(database_url, PHAGE_DATABASE_URL)",
                    field="database_url",
                )
            backup_pg.refuse_overwrite(db_url, force)  # before anything is written
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        (data_dir / "pki").mkdir(exist_ok=True)
        for name in (*PKI, *SECRETS):
            if (root / name).is_file():
                shutil.copyfile(root / name, data_dir / name)
                os.chmod(data_dir / name, 0o644 if name.endswith("ca.pem") else 0o600)
        for blob in (root / "blobs").glob("??/*") if (root / "blobs").is_dir() else []:
            target = data_dir / "blobs" / blob.parent.name / blob.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob, target)
        if manifest["database"] == "sqlite":
            target_db = _sqlite_path(db_url)
            for suffix in ("-wal", "-shm"):  # a stale log must not be replayed over the restored file
                Path(f"{target_db}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(root / "database" / "phage.db", target_db)
            os.chmod(target_db, 0o600)
        else:
            backup_pg.restore(db_url, root / "database" / "phage.pgdump")
    return manifest
