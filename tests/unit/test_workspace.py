"""validate_tarball and tarball_from_files: what a workspace archive may contain."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time

import pytest

from phage.domain.workspace import MAX_MEMBERS, tarball_from_files, validate_tarball
from phage.errors import InvalidInput, PayloadTooLarge

LIMIT = 1024 * 1024


def info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = 1, 3
    return ti


def archive(*entries: tuple[str, bytes] | tarfile.TarInfo, mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry, None)
            else:
                name, data = entry
                tar.addfile(info(name, data), io.BytesIO(data))
    return buf.getvalue()


def refused(data: bytes, limit: int = LIMIT) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        validate_tarball(data, max_unpacked=limit)
    assert exc.value.field == "workspace"
    return exc.value


# ---- validate_tarball -----------------------------------------------------------


def test_valid_archive_lists_its_files_not_its_directories() -> None:
    data = archive(
        info("./", kind=tarfile.DIRTYPE),
        info("src", kind=tarfile.DIRTYPE),
        ("src/main.py", b"print(1)\n"),
        ("./data/in.txt", b"42"),
        ("README", b""),
    )
    assert validate_tarball(data, max_unpacked=LIMIT) == ["src/main.py", "data/in.txt", "README"]


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_tar_compression_is_read(mode: str) -> None:
    assert validate_tarball(archive(("a.txt", b"a"), mode=mode), max_unpacked=LIMIT) == ["a.txt"]


def test_empty_archive_is_valid_and_empty() -> None:
    assert validate_tarball(archive(), max_unpacked=LIMIT) == []


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (("../evil.py", b"x"), "'..'"),
        (("a/../../evil.py", b"x"), "'..'"),
        (("..", b""), "'..'"),
        (("/etc/cron.d/evil", b"x"), "absolute"),
        (("a\\..\\evil", b"x"), "backslash"),
        (info("link", kind=tarfile.SYMTYPE, linkname="/etc/passwd"), "link"),
        (info("link", kind=tarfile.SYMTYPE, linkname="inside.txt"), "link"),  # even a harmless one
        (info("hard", kind=tarfile.LNKTYPE, linkname="/etc/shadow"), "link"),
        (info("null", kind=tarfile.CHRTYPE), "device or special file"),
        (info("sda", kind=tarfile.BLKTYPE), "device or special file"),
        (info("pipe", kind=tarfile.FIFOTYPE), "device or special file"),
        (info("/dev/null", kind=tarfile.CHRTYPE), "absolute"),
    ],
)
def test_dangerous_entries_are_refused(entry: tuple[str, bytes] | tarfile.TarInfo, words: str) -> None:
    # a harmless entry first: the check must look at every member, not just the first
    exc = refused(archive(("ok.txt", b"fine"), entry))
    assert words in exc.message
    name = entry.name if isinstance(entry, tarfile.TarInfo) else entry[0]
    assert repr(name) in exc.message


def test_unpacked_size_over_the_limit_is_413() -> None:
    bomb = archive(("zeros", bytes(200_000)))
    assert len(bomb) < 10_000  # small on the wire, large unpacked
    with pytest.raises(PayloadTooLarge) as exc:
        validate_tarball(bomb, max_unpacked=100_000)
    assert exc.value.field == "workspace"
    assert "100000" in exc.value.message
    assert validate_tarball(bomb, max_unpacked=200_000) == ["zeros"]  # the limit is inclusive


def test_size_limit_sums_over_files() -> None:
    data = archive(("a", bytes(600)), ("b", bytes(600)))
    assert validate_tarball(data, max_unpacked=1200) == ["a", "b"]
    with pytest.raises(PayloadTooLarge):
        validate_tarball(data, max_unpacked=1199)


def test_too_many_members_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(MAX_MEMBERS + 1):
            tar.addfile(info(f"d{i}", kind=tarfile.DIRTYPE))
    exc = refused(buf.getvalue())
    assert str(MAX_MEMBERS) in exc.message


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(os.urandom(4096), id="random"),
        pytest.param(b"print('hello')\n" * 100, id="text"),
        pytest.param(gzip.compress(b"hello\n" * 1000), id="gzipped-text"),
        pytest.param(b"PK\x03\x04" + os.urandom(500), id="zip-magic"),
        pytest.param(b"\x1f\x8b\x08\x00" + os.urandom(500), id="gzip-magic-then-junk"),
    ],
)
def test_not_a_tar_is_invalid_input(data: bytes) -> None:
    assert "not a valid tar archive" in refused(data).message


def test_truncated_archive_is_invalid_input() -> None:
    data = archive(("big.bin", os.urandom(50_000)))
    assert "truncated" in refused(data[: len(data) // 2]).message


def test_corrupt_gzip_checksum_is_invalid_input() -> None:
    """A .tar.gz whose gzip CRC is wrong is bad input, not a crash (gzip.BadGzipFile is an OSError)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(info("main.py", b"print(1)\n"), io.BytesIO(b"print(1)\n"))
    # without its end-of-archive blocks the reader runs into the gzip trailer, where the CRC is checked
    packed = bytearray(gzip.compress(raw.getvalue()[:1024], mtime=0))
    assert validate_tarball(bytes(packed), max_unpacked=LIMIT) == ["main.py"]
    packed[-8] ^= 0xFF
    refused(bytes(packed))


# ---- tarball_from_files --------------------------------------------------------


def test_inline_files_round_trip() -> None:
    files: dict[str, str | bytes] = {
        "run.sh": "#!/bin/sh\necho hi\n",
        "data/blob.bin": bytes(range(256)),
        "./notes.txt": "ünïcödé",
    }
    data = tarball_from_files(files, max_unpacked=LIMIT)
    assert sorted(validate_tarball(data, max_unpacked=LIMIT)) == ["data/blob.bin", "notes.txt", "run.sh"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["run.sh"].mode == 0o755  # a script with a shebang is executable
        assert members["notes.txt"].mode == 0o644
        for name, want in (("run.sh", b"#!/bin/sh\necho hi\n"), ("data/blob.bin", bytes(range(256)))):
            got = tar.extractfile(members[name])
            assert got is not None and got.read() == want
        notes = tar.extractfile(members["notes.txt"])
        assert notes is not None and notes.read().decode() == "ünïcödé"


def test_inline_files_are_deterministic() -> None:
    files = {"b.txt": "b", "a.txt": "a"}
    assert tarball_from_files(files, max_unpacked=LIMIT) == tarball_from_files(
        dict(reversed(list(files.items()))), max_unpacked=LIMIT
    )


def test_inline_files_do_not_depend_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same files, same bytes, at any time: the archive is content-addressed, so it must be reproducible."""
    files = {"main.py": "print(1)\n"}
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    first = tarball_from_files(files, max_unpacked=LIMIT)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    second = tarball_from_files(files, max_unpacked=LIMIT)
    assert first == second


@pytest.mark.parametrize(
    ("name", "words"),
    [("../x", "'..'"), ("/abs", "relative"), ("", "1 to 1024"), ("a*", "glob"), ("a\\b", "backslash")],
)
def test_inline_file_names_are_checked(name: str, words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        tarball_from_files({"ok.txt": "x", name: "y"}, max_unpacked=LIMIT)
    assert exc.value.field == f"files[{name!r}]"
    assert words in exc.value.message


def test_inline_files_over_the_limit_are_413() -> None:
    with pytest.raises(PayloadTooLarge) as exc:
        tarball_from_files({"a": "x" * 60, "b": "y" * 60}, max_unpacked=100)
    assert exc.value.field == "files"
    assert "100" in exc.value.message
    assert tarball_from_files({"a": "x" * 50, "b": "y" * 50}, max_unpacked=100)
