"""BlobStore: content-addressed, atomic writes, digest verification, size limit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from phage.errors import InvalidInput, PayloadTooLarge
from phage.store.blobs import BlobStore, check_digest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_put_stores_by_sha256(store: BlobStore) -> None:
    data = b"hello workspace"
    digest = store.put(data)
    assert digest == sha(data)
    assert store.path(digest) == store.root / digest[:2] / digest
    assert store.read(digest) == data
    assert store.exists(digest)
    assert store.size(digest) == len(data)
    assert files_under(store.root) == [store.path(digest)]  # nothing left in tmp


def test_put_is_idempotent(store: BlobStore) -> None:
    first = store.put(b"same")
    old = store.path(first).stat()
    os.utime(store.path(first), ns=(old.st_atime_ns, old.st_mtime_ns - 10**12))
    assert store.put(b"same") == first
    again = store.path(first).stat()
    assert again.st_ino == old.st_ino  # not rewritten
    assert again.st_mtime_ns >= old.st_mtime_ns  # but fresh again, so a sweep running now keeps it
    assert len(files_under(store.root)) == 1


def test_sweep_keeps_referenced_and_fresh_blobs(store: BlobStore) -> None:
    import time

    kept, orphan, fresh = store.put(b"kept"), store.put(b"orphan"), store.put(b"fresh")
    for digest in (kept, orphan):
        os.utime(store.path(digest), (time.time() - 7200, time.time() - 7200))
    stale_tmp = store.root / "tmp" / "upload-left-over"
    stale_tmp.write_bytes(b"x" * 10)
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))
    deleted, freed = store.sweep({kept}, older_than=time.time() - 3600)
    assert (deleted, freed) == (2, len(b"orphan") + 10)
    assert store.exists(kept) and store.exists(fresh) and not store.exists(orphan)
    assert not stale_tmp.exists()


def test_empty_blob(store: BlobStore) -> None:
    digest = store.put(b"")
    assert digest == sha(b"")
    assert store.read(digest) == b""
    assert store.size(digest) == 0


def test_absent_blob(store: BlobStore) -> None:
    digest = sha(b"never stored")
    assert not store.exists(digest)
    assert store.size(digest) is None
    with pytest.raises(FileNotFoundError):
        store.read(digest)


def test_streamed_write_is_invisible_until_commit(store: BlobStore) -> None:
    data = os.urandom(3 * 65536)
    writer = store.writer(limit=len(data))
    for i in range(0, len(data), 65536):
        writer.write(data[i : i + 65536])
    digest = sha(data)
    assert not store.exists(digest)  # readers never see a half-written blob
    partial = files_under(store.root)
    assert len(partial) == 1 and partial[0].parent == store.root / "tmp"
    assert writer.commit(digest) == digest
    assert store.read(digest) == data
    assert files_under(store.root) == [store.path(digest)]


def test_commit_refuses_a_wrong_digest_and_keeps_nothing(store: BlobStore) -> None:
    writer = store.writer(limit=100)
    writer.write(b"actual content")
    claimed = sha(b"what the node said it was")
    with pytest.raises(InvalidInput) as exc:
        writer.commit(claimed)
    assert exc.value.field == "sha256"
    assert claimed in exc.value.message and sha(b"actual content") in exc.value.message
    assert not store.exists(claimed)
    assert not store.exists(sha(b"actual content"))
    assert files_under(store.root) == []


def test_writer_refuses_more_than_its_limit(store: BlobStore) -> None:
    writer = store.writer(limit=10)
    writer.write(b"0123456789")  # exactly the limit is fine
    with pytest.raises(PayloadTooLarge) as exc:
        writer.write(b"!")
    assert exc.value.field == "size"
    assert "10" in exc.value.message
    assert files_under(store.root) == []  # the partial temp file is gone


def test_abort_discards(store: BlobStore) -> None:
    writer = store.writer(limit=100)
    writer.write(b"half")
    writer.abort()
    writer.abort()  # twice is harmless
    assert files_under(store.root) == []


def test_overwriting_an_existing_blob_is_atomic(store: BlobStore) -> None:
    data = b"content"
    digest = store.put(data)
    writer = store.writer(limit=100)
    writer.write(data)
    assert writer.commit(digest) == digest
    assert store.read(digest) == data
    assert len(files_under(store.root)) == 1


@pytest.mark.parametrize(
    "digest",
    [
        "../../etc/passwd",
        "A" * 64,
        "0" * 63,
        "0" * 65,
        "g" * 64,
        "../" + "0" * 61,
        "",
        "0" * 64 + "\n",
    ],
)
def test_digest_must_be_lowercase_hex_sha256(store: BlobStore, digest: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        store.path(digest)
    assert exc.value.field == "sha256"
    with pytest.raises(InvalidInput):
        check_digest(digest)
    with pytest.raises(InvalidInput):
        store.exists(digest)


def test_a_second_store_on_the_same_root_sees_the_blobs(tmp_path: Path) -> None:
    digest = BlobStore(tmp_path / "b").put(b"durable")
    assert BlobStore(tmp_path / "b").read(digest) == b"durable"
