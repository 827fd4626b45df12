"""The minimal filesystem a sandboxed run sees: ``/usr`` read-only, a synthesised ``/etc``.

Nothing of the host is bound wholesale: not ``/``, not ``/etc``, not ``/home``,
``/root``, ``/var`` or wherever the node keeps its keys and workspaces. A run sees
``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links or directories of the host's
layout), an ``/etc`` copied from a short list of public files plus synthesised
``passwd``/``group``/``hosts``/``nsswitch.conf``, and its own workspace.

The stage is built once per process in a private, root-owned, world-readable
directory (the sandbox's unprivileged uid must read it), and rebuilt if removed.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SANDBOX_UID = 65534
SANDBOX_GID = 65534
WORKSPACE = "/workspace"
"""Where the run's workspace appears inside the sandbox (its working directory)."""

ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "mime.types",
    "services",
    "protocols",
    "networks",
    "host.conf",
    "gai.conf",
    "magic",
    "magic.mime",
    "ethertypes",
    "inputrc",
)
"""Public, secret-free host files copied (links kept as links) into the sandbox's /etc."""
ETC_DIRS = ("ld.so.conf.d", "alternatives", "ssl", "python3", "python3.11", "python3.12", "python3.13")
ETC_SKIP = ("private",)
"""Never copied from those directories: /etc/ssl/private holds host TLS keys."""
SYNTHESISED = {
    "passwd": (
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"nobody:x:{SANDBOX_UID}:{SANDBOX_GID}:nobody:{WORKSPACE}:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\nnogroup:x:{SANDBOX_GID}:\n",
    "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "hostname": "sandbox\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
    "networks: files\nprotocols: files\nservices: files\n",
}
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
MOUNT_POINTS = ("usr", "etc", "proc", "dev", "sys", "tmp", WORKSPACE.strip("/"))


@dataclass(frozen=True, slots=True)
class TopLevel:
    """One top-level entry of the host's layout: a link (merged /usr) or a directory to bind."""

    name: str
    link: str | None


def host_layout(root: Path = Path("/")) -> list[TopLevel]:
    """``/bin``, ``/lib*``, ``/sbin`` as this host has them: links to keep, or directories to bind."""
    found = []
    for name in TOP_LEVEL:
        path = root / name
        if path.is_symlink():
            found.append(TopLevel(name, os.readlink(path)))
        elif path.is_dir():
            found.append(TopLevel(name, None))
    return found


def _copy_etc(dest: Path, source: Path) -> None:
    dest.mkdir(mode=0o755)
    for name in ETC_FILES:
        src = source / name
        if src.is_symlink():
            (dest / name).symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copyfile(src, dest / name)
    for name in ETC_DIRS:
        src = source / name
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns(*ETC_SKIP))
    for name, text in SYNTHESISED.items():
        (dest / name).write_text(text)


def _readable(root: Path) -> None:
    """Directories 0755, files 0644: the sandbox's uid reads the stage, nobody writes it."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)


class Stage:
    """A built stage: ``rootfs/`` (an empty root with mount points, links and /etc) and ``mnt/``."""

    def __init__(self, root: Path, etc_source: Path = Path("/etc")) -> None:
        self.root = root
        self.rootfs = root / "rootfs"
        self.etc = self.rootfs / "etc"
        self.mnt = root / "mnt"
        """Empty directory a privileged run binds its workspace on, in its own mount namespace."""
        self.layout = host_layout()
        self.rootfs.mkdir(mode=0o755)
        for name in MOUNT_POINTS:
            if name != "etc":
                (self.rootfs / name).mkdir(mode=0o755)
        for entry in self.layout:
            if entry.link is not None:
                (self.rootfs / entry.name).symlink_to(entry.link)
            else:
                (self.rootfs / entry.name).mkdir(mode=0o755)
        _copy_etc(self.etc, etc_source)
        self.mnt.mkdir(mode=0o755)
        _readable(self.root)
        self.etc_files = sorted(
            str(p.relative_to(self.etc)) for p in self.etc.rglob("*") if p.is_file() or p.is_symlink()
        )
        self.etc_sha256 = _tree_hash(self.etc)

    def intact(self) -> bool:
        """False once something (a /tmp cleaner) removed the stage."""
        return self.etc.is_dir() and self.mnt.is_dir()

    def describe(self) -> dict[str, object]:
        """What the stage exposes, without its temporary path."""
        return {
            "binds_ro": ["/usr", *(f"/{e.name}" for e in self.layout if e.link is None)],
            "links": {f"/{e.name}": e.link for e in self.layout if e.link is not None},
            "etc_files": len(self.etc_files),
            "etc_sha256": self.etc_sha256,
        }


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root)).encode()
        if path.is_symlink():
            h.update(b"L" + rel + b"\0" + os.readlink(path).encode() + b"\0")
        elif path.is_file():
            h.update(b"F" + rel + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


_lock = threading.Lock()
_stage: Stage | None = None


STAGE_TMPFS_BYTES = 64 * 1024**2
"""Size of the tmpfs a root node builds its stage on (the copied /etc takes about 1 MiB)."""


def _remove(path: Path) -> None:
    if os.path.ismount(path):  # a stage on its own tmpfs (root nodes)
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True, timeout=30, check=False)
    shutil.rmtree(path, ignore_errors=True)


def _own_filesystem(root: Path) -> None:
    """Root nodes: put the stage on its own tmpfs, so the sandbox's ``mountinfo`` shows
    ``/rootfs/etc`` as the source of its ``/etc``, not a path on the host."""
    if os.geteuid() != 0:
        return
    options = f"size={STAGE_TMPFS_BYTES},mode=0755,nosuid,nodev"
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "phage-stage", str(root)],
            capture_output=True,
            timeout=30,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        problem = "" if done.returncode == 0 else done.stderr.decode(errors="replace").strip()
    except (OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    if problem:  # the stage still works from the directory; only its path shows in mountinfo
        log.warning("the sandbox stage stays a plain directory: %s", problem)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def private_dir(kind: str) -> Path:
    """A new 0700 temporary directory ``phage-<kind>-<pid>-…``, after sweeping dead processes' ones."""
    prefix = f"phage-{kind}-"
    tmp = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for old in tmp.glob(f"{prefix}*"):
            pid = old.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)) and old.is_dir() and not old.is_symlink():
                _remove(old)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def stage() -> Stage:
    """This process's stage, built on first use (and again if it went missing)."""
    global _stage
    with _lock:
        if _stage is None or not _stage.intact():
            if _stage is not None:
                _remove(_stage.root)
            root = private_dir("sandbox")
            os.chmod(root, 0o755)
            try:
                _own_filesystem(root)
                _stage = Stage(root)
            except BaseException:
                _remove(root)
                raise
            atexit.register(_remove, root)
        return _stage


def grant_workspace(workdir: Path) -> None:
    """Give the tree to the sandbox uid (root nodes: the run is that uid on the host too)."""
    with contextlib.suppress(FileNotFoundError):
        os.chown(workdir, SANDBOX_UID, SANDBOX_GID)
    for dirpath, dirnames, filenames in os.walk(workdir):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, name), SANDBOX_UID, SANDBOX_GID, follow_symlinks=False)
