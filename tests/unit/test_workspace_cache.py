"""The node's cache of streamed workspace archives: checked by digest, bounded, least recently used first."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from phage.errors import ProtocolError
from phage.node.workspaces import WorkspaceCache


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_keeps_and_returns_an_archive_by_digest(tmp_path: Path) -> None:
    cache = WorkspaceCache(tmp_path / "ws")
    data = b"archive" * 100
    assert cache.get(_digest(data)) is None
    cache.put(_digest(data), data)
    assert cache.get(_digest(data)) == data
    assert (tmp_path / "ws").stat().st_mode & 0o777 == 0o700


def test_refuses_data_that_does_not_match_its_digest(tmp_path: Path) -> None:
    cache = WorkspaceCache(tmp_path / "ws")
    with pytest.raises(ProtocolError, match="does not match its digest"):
        cache.put(_digest(b"expected"), b"something else")
    with pytest.raises(ProtocolError, match="not a sha256 digest"):
        cache.get("../../etc/passwd")
    assert list((tmp_path / "ws").iterdir()) == []


def test_an_archive_damaged_on_disk_is_dropped_not_used(tmp_path: Path) -> None:
    cache = WorkspaceCache(tmp_path / "ws")
    data = b"archive"
    cache.put(_digest(data), data)
    (tmp_path / "ws" / _digest(data)).write_bytes(b"tampered")
    assert cache.get(_digest(data)) is None
    assert not (tmp_path / "ws" / _digest(data)).exists()


def test_the_least_recently_used_go_first_past_the_budget(tmp_path: Path) -> None:
    cache = WorkspaceCache(tmp_path / "ws", budget=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    for i, blob in enumerate(blobs):
        cache.put(_digest(blob), blob)
        os.utime(tmp_path / "ws" / _digest(blob), ns=(i * 10**9, i * 10**9))
    assert cache.get(_digest(blobs[0])) is None, "the oldest went when the third arrived"
    assert cache.get(_digest(blobs[1])) == blobs[1]  # now the most recently used
    newest = b"z" * 100
    cache.put(_digest(newest), newest)
    assert cache.get(_digest(blobs[2])) is None
    assert cache.get(_digest(blobs[1])) == blobs[1] and cache.get(_digest(newest)) == newest
