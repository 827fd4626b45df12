"""Output collection on hostile trees: the same matches as ``Path.glob``, never through a link, bounded."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest

from phage.node.outputs import Bounds, collect_outputs

PATTERNS = ["*.txt", "out/*", "**/*.txt", "out/**/*.bin", "*/x?.txt", "[ab]*/*", "**/deep/*", "nothing/*"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in (
        "a.txt",
        "out/r.bin",
        "out/x1.txt",
        "out/sub/y.bin",
        "b/deep/z.txt",
        ".hidden.txt",
        "c/x2.txt",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    return tmp_path


@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_what_path_glob_matches_on_a_plain_tree(tree: Path, pattern: str) -> None:
    expected = sorted(p.relative_to(tree).as_posix() for p in tree.glob(pattern) if p.is_file())
    found, problem = collect_outputs(tree, (pattern,), 1 << 20)
    assert problem == ""
    assert [o.path for o in found] == expected


def test_links_are_never_followed_nor_collected(tree: Path) -> None:
    os.symlink("/etc", tree / "etc-link")
    os.symlink("/etc/passwd", tree / "out" / "passwd.txt")
    os.symlink("../a.txt", tree / "out" / "alias.txt")
    os.symlink("..", tree / "out" / "up")
    found, problem = collect_outputs(tree, ("**/*", "*/passwd", "out/up/*.txt"), 1 << 20)
    assert problem == ""
    paths = [o.path for o in found]
    assert "out/passwd.txt" not in paths and "out/alias.txt" not in paths
    assert not any("etc-link" in p or "/up/" in p for p in paths)


def test_a_link_maze_costs_nothing(tmp_path: Path) -> None:
    # Path.glob would walk 20^6 paths here (links to "." are directories to it)
    (tmp_path / "m").mkdir()
    for i in range(20):
        os.symlink(".", tmp_path / "m" / f"l{i}")
    (tmp_path / "m" / "real.txt").write_text("real")
    tracemalloc.start()
    started = time.monotonic()
    found, problem = collect_outputs(tmp_path, ("m/*/*/*/*/*/*/*.txt", "m/*.txt"), 1 << 20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.monotonic() - started < 1 and peak < 5 * 1024**2
    assert [o.path for o in found] == ["m/real.txt"] and problem == ""


def test_entries_depth_and_time_are_bounded(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}.txt").write_text("x")
    found, problem = collect_outputs(tmp_path, ("*.txt",), 1 << 20, Bounds(entries=10))
    assert len(found) <= 10 and "stopped after 10 entries" in problem
    deep = tmp_path / "d"
    deep.mkdir()
    cur = deep
    for _ in range(10):
        cur = cur / "d"
        cur.mkdir()
    (cur / "end.txt").write_text("x")
    found, problem = collect_outputs(tmp_path, ("**/end.txt",), 1 << 20, Bounds(depth=5))
    assert found == [] and "deeper than 5" in problem
    found, problem = collect_outputs(tmp_path, ("**/*.txt",), 1 << 20, Bounds(seconds=0))
    assert "stopped after 0s" in problem


def test_odd_names_are_skipped_one_by_one(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("good")
    (tmp_path / "back\\slash.txt").write_text("bad")
    with open(os.path.join(os.fsencode(tmp_path), b"latin-\xe9.txt"), "w") as fh:
        fh.write("bad")
    found, problem = collect_outputs(tmp_path, ("*.txt",), 1 << 20)
    assert [o.path for o in found] == ["good.txt"]
    assert "back\\\\slash.txt" in problem and "backslash" in problem
    assert "latin-\\\\xe9.txt" in problem and "not valid UTF-8" in problem


def test_an_output_over_its_limit_fails_the_collection(tree: Path) -> None:
    (tree / "big.txt").write_bytes(b"x" * 2048)
    found, problem = collect_outputs(tree, ("*.txt",), 1024)
    assert found == [] and "'big.txt' is 2048 bytes; the limit is 1024" in problem
