"""Filling a sandbox's working directory from a workspace archive.

Used on both sides: a node unpacks a task's workspace before running it, and the coordinator
unpacks it to re-run a generate task's verifier. Archives were validated at submit
(``domain/workspace.py``); extraction still uses the ``data`` filter as a second line.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def unpack_workspace(archive: bytes, dest: Path) -> None:
    """Extract a workspace archive with the ``data`` filter (no links out, no devices)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        tar.extractall(dest, filter="data")
