"""Collecting a job's outputs from its workspace, on the host, after the sandbox is gone.

The workspace is the job's: every name, link and directory in it may be hostile.
``Path.glob`` follows symbolic links to directories, so links that point back up
the tree make it walk an exponential number of paths (minutes of node CPU and
hundreds of MB of memory for a few bytes of links). Here the tree is walked once,
never through a link, with bounds on entries, depth and time, and only into
directories some pattern could still match below. A file is opened with
``O_NOFOLLOW`` and must be a regular file: links are never outputs.

One bad file does not cost the others: a name that is not valid UTF-8 or that
the download API would refuse (a backslash) is skipped and reported by name.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from phage.domain.manifest import safe_relative_path
from phage.errors import InvalidInput

MAX_ENTRIES = 100_000
"""Directory entries looked at, at most, per collection."""
MAX_DEPTH = 64
"""Directories below the workspace walked into, at most."""
MAX_SECONDS = 10.0
"""Wall-clock bound of one collection (hashing included)."""
_READ = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CollectedOutput:
    """An output file found after a run."""

    path: str
    local: Path
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much of a workspace one collection may look at."""

    entries: int = MAX_ENTRIES
    depth: int = MAX_DEPTH
    seconds: float = MAX_SECONDS


class _Stop(Exception):
    """A bound was reached; the message says which."""


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...], *, below: bool) -> bool:
    """Whether ``parts`` (a file path) matches ``pattern`` as ``Path.glob`` would, or with
    ``below``: whether a file somewhere below directory ``parts`` could still match."""

    @functools.cache
    def go(i: int, j: int) -> bool:
        if j == len(parts):
            return i < len(pattern) if below else i == len(pattern)
        if i == len(pattern):
            return False
        if pattern[i] == "**":
            # ``**`` stands for directories: never a file's own name
            takes_one = (below or j < len(parts) - 1) and go(i, j + 1)
            return go(i + 1, j) or takes_one
        return fnmatch.fnmatchcase(parts[j], pattern[i]) and go(i + 1, j + 1)

    return go(0, 0)


def name_problem(rel: str) -> str:
    """Why an output file's name cannot be kept, or "" when it can."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return f"output {shown!r} skipped: its name is not valid UTF-8"
    try:
        safe_relative_path(rel, "output", allow_glob=True)
    except InvalidInput as exc:
        return f"output {rel!r} skipped: {exc.message}"
    return ""


def _hash(dir_fd: int, name: str, max_bytes: int) -> tuple[str, int] | str:
    """sha256 and size of a regular file opened without following links; or why not."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        if st.st_size > max_bytes:
            return f"is {st.st_size} bytes; the limit is {max_bytes}"
        h = hashlib.sha256()
        while chunk := fh.read(_READ):
            h.update(chunk)
        return h.hexdigest(), st.st_size


def collect_outputs(
    workdir: Path, patterns: tuple[str, ...], max_bytes: int, bounds: Bounds = Bounds()
) -> tuple[list[CollectedOutput], str]:
    """Regular files under ``workdir`` matching the globs; returns (outputs, problems as text).

    A file over ``max_bytes`` fails the whole collection (its outputs are not
    kept); a bad name only skips that file. Reaching a bound ends the walk with
    what was found so far and says which bound it was.
    """
    split = [tuple(p.split("/")) for p in patterns]
    found: dict[str, CollectedOutput] = {}
    problems: list[str] = []
    deadline = time.monotonic() + bounds.seconds
    seen = 0
    stack: list[tuple[str, ...]] = [()]
    try:
        while stack:
            parts = stack.pop()
            if len(parts) > bounds.depth:
                raise _Stop(f"output collection stopped: directories nest deeper than {bounds.depth}")
            here = os.path.join(workdir, *parts)
            try:
                dir_fd = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                with os.scandir(dir_fd) as entries:
                    names = sorted((e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in entries)
                for name, is_dir, is_link in names:
                    seen += 1
                    if seen > bounds.entries:
                        raise _Stop(f"output collection stopped after {bounds.entries} entries")
                    if time.monotonic() > deadline:
                        raise _Stop(f"output collection stopped after {bounds.seconds:g}s")
                    path = (*parts, name)
                    if is_dir:
                        if any(_matches(p, path, below=True) for p in split):
                            stack.append(path)
                        continue
                    if is_link or not any(_matches(p, path, below=False) for p in split):
                        continue
                    rel = "/".join(path)
                    problem = name_problem(rel)
                    if problem:
                        problems.append(problem)
                        continue
                    got = _hash(dir_fd, name, max_bytes)
                    if isinstance(got, str):
                        if got.startswith("is "):
                            return [], f"output {rel!r} {got}"
                        if got:
                            problems.append(f"output {rel!r} skipped: it {got}")
                        continue
                    found[rel] = CollectedOutput(rel, workdir / rel, got[0], got[1])
            finally:
                os.close(dir_fd)
    except _Stop as stop:
        problems.append(str(stop))
    return [found[k] for k in sorted(found)], "\n".join(problems)
