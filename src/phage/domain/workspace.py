"""Workspaces: validating uploaded tarballs and building them from inline files.

A workspace tarball comes from a user and is unpacked on a node, so it is
checked before it is stored: only regular files and directories, relative
paths without ``..``, bounded count and size. Symlinks, hard links and device
files are refused outright rather than sanitised.
"""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Mapping

from phage.domain.manifest import safe_relative_path
from phage.errors import InvalidInput, PayloadTooLarge

MAX_MEMBERS = 10_000


def validate_tarball(data: bytes, *, max_unpacked: int) -> list[str]:
    """Check a ``.tar.gz`` (or plain tar) workspace; returns its file names."""
    names: list[str] = []
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise InvalidInput(f"workspace has more than {MAX_MEMBERS} entries", field="workspace")
                name = member.name
                if name.startswith("/"):
                    raise InvalidInput(f"workspace entry {name!r} has an absolute path", field="workspace")
                if member.issym() or member.islnk():
                    raise InvalidInput(
                        f"workspace entry {name!r} is a link; links are not allowed", field="workspace"
                    )
                if not (member.isfile() or member.isdir()):
                    raise InvalidInput(
                        f"workspace entry {name!r} is a device or special file", field="workspace"
                    )
                if name in (".", "./"):
                    continue
                try:
                    norm = safe_relative_path(name, "workspace", allow_glob=True)
                except InvalidInput as exc:
                    raise InvalidInput(f"workspace entry {name!r}: {exc.message}", field="workspace") from exc
                total += member.size
                if total > max_unpacked:
                    raise PayloadTooLarge(
                        f"workspace unpacks to more than the limit of {max_unpacked} bytes", field="workspace"
                    )
                if member.isfile():
                    names.append(norm)
                    _read_through(tar, member)
    except tarfile.TarError as exc:
        raise InvalidInput(f"workspace is not a valid tar archive: {exc}", field="workspace") from exc
    except EOFError as exc:
        raise InvalidInput("workspace archive is truncated", field="workspace") from exc
    except (OSError, zlib.error, lzma.LZMAError) as exc:  # corrupt gzip/bz2/xz stream or checksum
        raise InvalidInput(f"workspace is not a valid compressed archive: {exc}", field="workspace") from exc
    return names


def _read_through(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Decompress a member's data so a corrupt stream or checksum is caught here, not on a node."""
    fh = tar.extractfile(member)
    if fh is not None:
        while fh.read(1 << 20):
            pass


def tarball_from_files(files: Mapping[str, str | bytes], *, max_unpacked: int) -> bytes:
    """A deterministic ``.tar.gz`` of inline files (name → text or bytes)."""
    buf = io.BytesIO()
    total = 0
    seen: set[str] = set()
    # gzip with mtime 0: the same files always give the same bytes, so they de-duplicate by digest.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name in sorted(files):
            norm = safe_relative_path(name, f"files[{name!r}]")
            if norm in seen:
                raise InvalidInput(f"files names {norm!r} twice", field="files")
            seen.add(norm)
            raw = files[name]
            data = raw.encode() if isinstance(raw, str) else raw
            total += len(data)
            if total > max_unpacked:
                raise PayloadTooLarge(f"inline files exceed the limit of {max_unpacked} bytes", field="files")
            info = tarfile.TarInfo(norm)
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
