"""Manifests, paths and workspaces: what users send is checked before it is stored."""

from __future__ import annotations

import io
import tarfile

import pytest

from phage.domain import JobManifest
from phage.domain.manifest import safe_relative_path
from phage.domain.workspace import tarball_from_files, validate_tarball
from phage.errors import InvalidInput, PayloadTooLarge


def test_manifest_defaults_and_command() -> None:
    m = JobManifest.parse({"entrypoint": "run.py", "args": ["--n", "3"]})
    assert m.interpreter == "python3" and m.timeout_s == 300
    assert m.command() == ["python3", "run.py", "--n", "3"]
    assert JobManifest.parse({"entrypoint": "bin/tool", "interpreter": ""}).command() == ["bin/tool"]
    assert JobManifest.parse(m.to_dict()) == m


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("not a dict", "manifest"),
        ({}, "manifest.entrypoint"),
        ({"entrypoint": "../x"}, "manifest.entrypoint"),
        ({"entrypoint": "x", "interpreter": "python3; rm -rf /"}, "manifest.interpreter"),
        ({"entrypoint": "x", "args": [1]}, "manifest.args"),
        ({"entrypoint": "x", "env": {"A": 1}}, "manifest.env"),
        ({"entrypoint": "x", "outputs": "*.txt"}, "manifest.outputs"),
        ({"entrypoint": "x", "timeout_s": True}, "manifest.timeout_s"),
        ({"entrypoint": "x", "timeout_s": 0}, "manifest.timeout_s"),
        ({"entrypoint": "x", "surprise": 1}, "manifest"),
    ],
)
def test_manifest_rejections_name_the_field(data: object, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        JobManifest.parse(data)
    assert err.value.field == field


@pytest.mark.parametrize("bad", ["", "/abs", "..", "../x", "a/../../x", "a\\b", "a\x00b", "x" * 2000])
def test_unsafe_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        safe_relative_path(bad, "path")


def test_safe_paths_are_normalised() -> None:
    assert safe_relative_path("a/./b//c.txt", "p") == "a/b/c.txt"
    assert safe_relative_path("out/*.txt", "p", allow_glob=True) == "out/*.txt"
    with pytest.raises(InvalidInput):
        safe_relative_path("out/*.txt", "p")


def test_inline_files_round_trip_through_validation() -> None:
    archive = tarball_from_files({"main.py": "print(1)", "data/in.txt": b"\x00\x01"}, max_unpacked=1024)
    assert sorted(validate_tarball(archive, max_unpacked=1024)) == ["data/in.txt", "main.py"]
    assert tarball_from_files({"a": "1"}, max_unpacked=10) == tarball_from_files({"a": "1"}, max_unpacked=10)
    with pytest.raises(PayloadTooLarge):
        tarball_from_files({"a": "x" * 11}, max_unpacked=10)


def test_validate_tarball_counts_unpacked_size() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 10_000
        tar.addfile(info, io.BytesIO(b"\0" * 10_000))
    with pytest.raises(PayloadTooLarge, match="unpacks"):
        validate_tarball(buf.getvalue(), max_unpacked=5_000)
    with pytest.raises(InvalidInput, match=r"truncated|not a valid tar"):
        validate_tarball(buf.getvalue()[:40], max_unpacked=5_000)
