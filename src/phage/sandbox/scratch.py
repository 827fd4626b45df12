"""Scratch volumes: each workspace on its own small filesystem, so the kernel enforces its cap.

A guard that polls the workspace's size sees a disk filler only after the fact:
``posix_fallocate`` reserves gigabytes of real disk in microseconds, faster than
any walk, and RLIMIT_FSIZE does not stop preallocation that keeps the file's size
(``FALLOC_FL_KEEP_SIZE``) nor many files each under it. So on a root node every
workspace is an ext4 filesystem of exactly the cap, in a sparse image file
loop-mounted on the workspace directory:

- the job (and the node unpacking its inputs) gets ``ENOSPC`` at the cap, whatever
  system call it uses; the image never holds more host disk than the cap, and
  ``discard`` gives deleted files' blocks back to the host at once;
- its inode count is bounded too (one per 16 KiB of cap), which bounds what output
  collection can be made to walk;
- not memory: a size-limited tmpfs would count real pages as well, but against the
  run's memory limit and the host's RAM, for as long as the node keeps the outputs;
- the filesystem's own root is the workspace, so the sandbox's ``mountinfo`` names
  ``/``, never the node's directories.

Creating one copies an empty filesystem image made once per size (``mkfs.ext4``
without journal or table zeroing; its few hundred KiB of metadata, holes kept)
and mounts it (``mount -o loop``): about 20 ms on an idle machine; removing one
(a lazy ``umount``, the image deleted) about as much, off the event loop.
Where volumes cannot be made (an unprivileged node, no loop devices) ``detect``
says why and the node refuses to start unless its operator accepts a polled cap.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from phage.errors import SandboxError
from phage.sandbox.rootfs import private_dir

IMAGE_SUFFIX = ".scratch"
"""A workspace ``<root>/<id>``'s image is ``<root>/<id>.scratch``, beside it, never inside it."""
BYTES_PER_INODE = 16 * 1024
MIN_INODES = 512
MIN_CAP = 4 * 1024**2
"""Smallest volume made; ext4 needs a few blocks of its own."""
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 30.0
FULL_SLACK = 64 * 1024
"""A volume with less than this free counts as full (ext4 keeps a few blocks of its own)..."""
FULL_SHARE = 16
"""... or with less than 1/16 of its size free, up to ``FULL_CHUNK``: a writer that fails on a
large write (ENOSPC) leaves up to that write's size unused."""
FULL_CHUNK = 2 * 1024**2


@dataclass(frozen=True, slots=True)
class ScratchVolumes:
    """Makes and removes per-workspace ext4 volumes with ``mkfs.ext4`` and ``mount``."""

    mkfs: str
    mount: str
    umount: str

    @staticmethod
    @functools.cache
    def detect() -> ScratchVolumes | str:
        """Volumes work here (one made and removed to be sure), or why not."""
        if os.geteuid() != 0:
            return "mounting a filesystem per workspace needs root (this node runs unprivileged)"
        found = {name: shutil.which(name, path=TOOL_PATH) for name in ("mkfs.ext4", "mount", "umount")}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            return f"missing {', '.join(missing)} (Debian: apt-get install e2fsprogs mount)"
        if not Path("/dev/loop-control").exists():
            return "no loop devices here (/dev/loop-control is missing)"
        volumes = ScratchVolumes(str(found["mkfs.ext4"]), str(found["mount"]), str(found["umount"]))
        with tempfile.TemporaryDirectory(prefix="phage-scratch-probe-") as tmp:
            work = Path(tmp) / "probe"
            try:
                volumes.create(work, MIN_CAP)
            except SandboxError as exc:
                return exc.message
            finally:
                volumes.release(work)
        return volumes

    def describe(self) -> str:
        """The mechanism, for sandbox descriptions and attestations."""
        return "ext4 volume per workspace (loop)"

    def create(self, workdir: Path, cap_bytes: int) -> None:
        """Make ``workdir`` (which must not exist) the mount point of a fresh volume of ``cap_bytes``."""
        image = image_of(workdir)
        workdir.mkdir(mode=0o700)
        try:
            _sparse_copy(self._template(max(MIN_CAP, cap_bytes)), image)
            opts = "loop,nosuid,nodev,discard,noinit_itable"
            self._tool(self.mount, "-t", "ext4", "-o", opts, str(image), str(workdir))
            with contextlib.suppress(OSError):
                (workdir / "lost+found").rmdir()
            os.chmod(workdir, 0o700)
        except BaseException:
            self.release(workdir)
            raise

    def _template(self, size: int) -> Path:
        """An empty filesystem image of ``size``, made once per size (copying it beats ``mkfs``)."""
        global _template_dir
        with _lock:
            path = _templates.get(size)
            if path is not None and path.exists():
                return path
            if _template_dir is None or not _template_dir.is_dir():
                _template_dir = private_dir("scratch")
                atexit.register(shutil.rmtree, _template_dir, True)
            path = _template_dir / f"ext4-{size}.img"
            path.unlink(missing_ok=True)
            with open(path, "xb") as fh:
                fh.truncate(size)
            inodes = max(MIN_INODES, size // BYTES_PER_INODE)
            self._tool(
                self.mkfs, "-q", "-F", "-m", "0", "-N", str(inodes), "-O", "^has_journal,^resize_inode",
                "-E", "lazy_itable_init=1,nodiscard", str(path),
            )  # fmt: skip
            _templates[size] = path
            return path

    def release(self, workdir: Path) -> None:
        """Unmount (lazily: a process still inside keeps it until it leaves) and delete the volume."""
        if os.path.ismount(workdir):
            with contextlib.suppress(SandboxError):
                self._tool(self.umount, "--lazy", str(workdir))
        shutil.rmtree(workdir, ignore_errors=True)
        image_of(workdir).unlink(missing_ok=True)

    def sweep(self, root: Path, keep: str = "") -> list[str]:
        """Remove every volume and workspace under ``root`` but ``keep`` (a crashed node's leftovers)."""
        if not root.is_dir():
            return []
        for mount in mounted_under(root):
            with contextlib.suppress(SandboxError):
                self._tool(self.umount, "--lazy", str(mount))
        return remove_entries(root, keep)

    def _tool(self, *argv: str) -> None:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, env={"PATH": TOOL_PATH}
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"cannot make a scratch volume: {exc}") from exc
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")[-300:]
            raise SandboxError(f"cannot make a scratch volume: {Path(argv[0]).name}: {detail}")


_lock = threading.Lock()
_templates: dict[int, Path] = {}
_template_dir: Path | None = None


def _sparse_copy(source: Path, dest: Path) -> None:
    """Copy ``source``'s data extents into a new file ``dest`` of its size, keeping the holes."""
    with open(source, "rb") as src, open(dest, "xb") as out:
        os.fchmod(out.fileno(), 0o600)
        size = os.fstat(src.fileno()).st_size
        out.truncate(size)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            src.seek(start)
            out.seek(start)
            while start < end:
                chunk = src.read(min(1 << 20, end - start))
                out.write(chunk)
                start += len(chunk)
            pos = end


def make_workspace(workdir: Path, volumes: ScratchVolumes | None, cap: int | None) -> None:
    """An empty workspace at ``workdir``: a volume of ``cap`` where there are volumes, else a directory."""
    if volumes is not None and cap is not None:
        volumes.create(workdir, cap)
    else:
        workdir.mkdir(mode=0o700, parents=True)


def remove_workspace(workdir: Path, volumes: ScratchVolumes | None) -> None:
    """Remove a workspace :func:`make_workspace` made (and its volume); nothing if it is gone."""
    if volumes is not None:
        volumes.release(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def scratch_mechanism() -> str:
    """How this machine caps a workspace, for sandbox descriptions (and so attestations)."""
    found = ScratchVolumes.detect()
    volume = found.describe() + " + " if isinstance(found, ScratchVolumes) else ""
    return volume + "rlimit-fsize + watch"


def image_of(workdir: Path) -> Path:
    """Where the volume of ``workdir`` keeps its image."""
    return workdir.with_name(workdir.name + IMAGE_SUFFIX)


def volume_full(workdir: Path) -> bool:
    """True when ``workdir`` is a volume with (almost) no space left."""
    try:
        st = os.statvfs(workdir)
    except OSError:
        return False
    slack = max(FULL_SLACK, min(FULL_CHUNK, st.f_blocks * st.f_frsize // FULL_SHARE))
    return st.f_bavail * st.f_frsize < slack


def is_volume(workdir: Path) -> bool:
    """True when ``workdir`` is a mount point (a scratch volume)."""
    return os.path.ismount(workdir)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as three octal digits
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_under(root: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Mount points strictly below ``root``, deepest first."""
    base = root.resolve()
    found = []
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                point = Path(_unescape(fields[4]))
                if point != base and point.is_relative_to(base):
                    found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_entries(root: Path, keep: str = "") -> list[str]:
    """Delete everything directly under ``root`` but ``keep`` (never following links); the names removed."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if entry.name == keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            removed.append(entry.name)
    return removed
