"""Workspace archives a node has downloaded, kept by digest so the next task with it skips the download.

Small workspaces travel inside the assignment; larger ones are streamed from the
coordinator (``DownloadBlob``), which costs a round trip and the transfer for
every task, although pools often run many tasks over one workspace (sweeps, the
quorum copies of a job, verifiers). A node keeps the archives it fetched, each
checked against its digest before it is kept or used, up to a byte budget; the
least recently used go first. Only the archive is kept: every task still unpacks
its own fresh copy into its own scratch directory, so nothing one task writes
can reach another.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

from phage.errors import ProtocolError

DEFAULT_BUDGET = 512 * 1024**2


class WorkspaceCache:
    """Archives by sha256 in one private directory, at most ``budget`` bytes in all."""

    def __init__(self, root: Path, budget: int = DEFAULT_BUDGET) -> None:
        self.root = root
        self.budget = budget
        self._lock = threading.Lock()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ProtocolError(f"not a sha256 digest: {digest[:80]!r}", field="workspace_sha256")
        return self.root / digest

    def get(self, digest: str) -> bytes | None:
        """The archive, if kept and still intact; None otherwise."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:  # damaged on disk: drop it, fetch again
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return data

    def put(self, digest: str, data: bytes) -> None:
        """Keep ``data`` under ``digest``; refuses data that does not match it."""
        path = self._path(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ProtocolError(
                "the downloaded workspace does not match its digest", field="workspace_sha256"
            )
        if len(data) > self.budget:
            return
        with self._lock:
            tmp = path.with_name(f".{digest}.{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            self._evict()

    def _evict(self) -> None:
        kept = []
        for entry in os.scandir(self.root):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                kept.append((st.st_mtime_ns, st.st_size, entry.path))
        total = sum(size for _, size, _ in kept)
        for _, size, path in sorted(kept):
            if total <= self.budget:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
