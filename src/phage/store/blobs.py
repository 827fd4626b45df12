"""Content-addressed files (sha256) under the data directory: workspaces and outputs."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from phage.errors import InvalidInput, PayloadTooLarge

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a lowercase hex sha256, else raise."""
    if not _SHA256.fullmatch(digest):
        raise InvalidInput("sha256 must be 64 lowercase hex characters", field="sha256")
    return digest


class BlobStore:
    """Immutable files named by their sha256; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob with this digest lives (it may not exist)."""
        check_digest(digest)
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        """True if the blob is stored."""
        return self.path(digest).exists()

    def size(self, digest: str) -> int | None:
        """Stored size, or None when absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its digest."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            os.utime(self.path(digest))  # fresh again: a sweep running now must not take it (see sweep)
        except FileNotFoundError:
            writer = self.writer(limit=len(data))
            writer.write(data)
            writer.commit(digest)
        return digest

    def read(self, digest: str) -> bytes:
        """The whole blob."""
        return self.path(digest).read_bytes()

    def sweep(self, keep: set[str], older_than: float) -> tuple[int, int]:
        """Delete blobs not in ``keep`` last written before ``older_than`` (a Unix time), and stale
        temp files; returns (files deleted, bytes freed).

        Why the age matters: a blob is written before the row that refers to it (a workspace
        before its task, an output before its result), and :meth:`put` refreshes the time of a
        blob it finds already stored. Take ``older_than`` before reading ``keep``, and any blob
        referred to by a row written since is younger than it, so is kept.
        """
        deleted = freed = 0
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime >= older_than:
                    continue
                if sub == self._tmp or (_SHA256.fullmatch(path.name) and path.name not in keep):
                    path.unlink(missing_ok=True)
                    deleted, freed = deleted + 1, freed + st.st_size
        return deleted, freed

    def writer(self, limit: int) -> BlobWriter:
        """A streaming writer that refuses more than ``limit`` bytes."""
        return BlobWriter(self, limit)


class BlobWriter:
    """Streams a blob to a temp file, hashing as it goes."""

    def __init__(self, store: BlobStore, limit: int) -> None:
        self._store = store
        self._limit = limit
        fd, name = tempfile.mkstemp(dir=store._tmp)
        self._fh = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raise PayloadTooLarge past the limit."""
        self.size += len(chunk)
        if self.size > self._limit:
            self.abort()
            raise PayloadTooLarge(f"blob exceeds the limit of {self._limit} bytes", field="size")
        self._hash.update(chunk)
        self._fh.write(chunk)

    def commit(self, expected: str | None = None) -> str:
        """Finish; verify the digest if one was promised; returns the digest."""
        self._fh.close()
        digest = self._hash.hexdigest()
        if expected is not None and expected != digest:
            self._tmp.unlink(missing_ok=True)
            raise InvalidInput(f"content hashes to {digest}, not the declared {expected}", field="sha256")
        final = self._store.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, final)
        return digest

    def abort(self) -> None:
        """Discard what was written."""
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)
