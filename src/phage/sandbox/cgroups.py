"""Per-run control groups: the memory, process-count and CPU limits the kernel enforces.

Which hierarchy works is found at run time, never assumed:

- **cgroup v2** (one tree): a run gets ``<own group>/phage-sandbox/run-…`` with
  ``memory.max``, ``memory.swap.max``, ``pids.max`` and ``cpu.max``. The controllers
  must be enabled in this process's own group; if it still holds processes (the
  "no internal processes" rule), they are first moved to a ``phage-node`` leaf, as
  a delegated service or container is expected to allow.
- **cgroup v1** (a tree per controller): a run gets ``phage-sandbox/run-…`` under
  the controller's root or, where that is not writable, under this process's own
  group, with ``memory.limit_in_bytes`` (+ ``memsw``), ``pids.max`` and
  ``cpu.cfs_quota_us``. The root comes first because a v1 group that is not
  delegated (a systemd unit's, a job runner's) is not ours to nest groups in: they
  would keep its manager from removing it.

v2 is used when it offers both ``memory`` and ``pids``; otherwise v1 for whichever
of the three it offers writable. The run's wrapper joins its groups by writing its
own pid to each ``cgroup.procs`` before it execs the sandbox, so nothing of the run
is ever outside them (no ``preexec_fn``, which is unsafe beside gRPC's threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
GROUP = "phage-sandbox"
"""Directory holding this machine's run groups, under each hierarchy's chosen parent."""
NODE_LEAF = "phage-node"
CPU_PERIOD_US = 100_000
_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What one run's groups enforce; None leaves that controller unlimited."""

    memory_bytes: int | None
    pids: int | None
    cpus: float | None


@dataclass(frozen=True, slots=True)
class _Mount:
    path: Path
    root: str
    version: int
    controllers: frozenset[str]


def _parse_mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        path = Path(fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2":
            mounts.append(_Mount(path, fields[3], 2, frozenset()))
        else:
            opts = frozenset(tail[2].split(","))
            mounts.append(_Mount(path, fields[3], 1, opts & frozenset(CONTROLLERS)))
    return mounts


def _parse_own(cgroup: str) -> dict[str, str]:
    """Controller → this process's group path; ``""`` → its v2 group."""
    own: dict[str, str] = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, names, path = parts
        if not names:
            own[""] = path
        for name in names.split(","):
            if name:
                own[name] = path
    return own


def _under(mount: _Mount, path: str) -> Path:
    rel = os.path.relpath(path, mount.root) if path.startswith(mount.root) else path
    rel = rel.lstrip("/")
    return mount.path if rel in ("", ".") else mount.path / rel


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with path.open("w") as fh:
        fh.write(value)


def _counter_of(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(group: Path, version: int) -> None:
    """Kill and remove run groups left by processes that died (a node killed -9).

    A run's processes normally die with their node (bwrap ``--die-with-parent``,
    runsc under a parent-death signal); whatever still lives in the group of a
    dead node is a leftover, found here when the next node on this machine starts.
    """
    with contextlib.suppress(OSError):
        for child in group.iterdir():
            parts = child.name.split("-")
            if len(parts) >= 3 and parts[0] == "run" and parts[1].isdigit() and not _alive(int(parts[1])):
                RunCgroup(version, {"pids": child}).remove_blocking(grace_s=2.0)


class Cgroups:
    """Where this process makes run groups, and with which controllers."""

    def __init__(self, version: int, groups: dict[str, Path]) -> None:
        self.version = version
        self.groups = groups
        """Controller → the ``phage-sandbox`` directory its run groups go in."""

    @property
    def controllers(self) -> tuple[str, ...]:
        """The controllers that are enforced, in a fixed order."""
        return tuple(c for c in CONTROLLERS if c in self.groups)

    def describe(self) -> dict[str, object]:
        """Version and controllers, without machine-specific paths."""
        return {"version": self.version, "controllers": list(self.controllers)}

    @classmethod
    def detect(cls, proc: Path = Path("/proc/self")) -> Cgroups | str:
        """The usable hierarchy, or why none is (read from ``proc``'s mountinfo and cgroup)."""
        mounts = _parse_mounts(_read(proc / "mountinfo"))
        own = _parse_own(_read(proc / "cgroup"))
        problems: list[str] = []
        v2 = next((m for m in mounts if m.version == 2), None)
        if v2 is not None and "" in own:
            found = _prepare_v2(_under(v2, own[""]))
            if isinstance(found, dict):
                return cls(2, found)
            problems.append(found)
        groups: dict[str, Path] = {}
        for controller in CONTROLLERS:
            mount = next((m for m in mounts if m.version == 1 and controller in m.controllers), None)
            if mount is None:
                continue
            candidates = [mount.path / GROUP, _under(mount, own.get(controller, "/")) / GROUP]
            for candidate in dict.fromkeys(candidates):
                if _try_v1(candidate, controller):
                    groups[controller] = candidate
                    break
            else:
                problems.append(f"cgroup v1 {controller} at {mount.path} is not writable")
        if groups:
            return cls(1, groups)
        if not problems:
            problems.append("no cgroup v1 or v2 hierarchy is mounted")
        return "; ".join(problems)

    def create(self, limits: CgroupLimits) -> RunCgroup:
        """Make one run's groups and write their limits; the caller joins them and removes them."""
        name = f"run-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        dirs: dict[str, Path] = {}
        try:
            for controller, group in self.groups.items():
                wanted = (
                    controller == "pids"
                    or (controller == "memory" and limits.memory_bytes is not None)
                    or (controller == "cpu" and limits.cpus is not None)
                )
                if not wanted:
                    continue
                path = group / name
                if path not in dirs.values():
                    path.mkdir()
                dirs[controller] = path
            run = RunCgroup(self.version, dirs)
            run.apply(limits)
        except BaseException:
            for path in set(dirs.values()):
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        return run


def _try_v1(group: Path, controller: str) -> bool:
    try:
        group.mkdir(exist_ok=True)
        probe = group / f"run-{os.getpid()}-probe-{secrets.token_hex(3)}"
        probe.mkdir()
    except OSError:
        return False
    try:
        knob = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.cfs_quota_us"}[controller]
        _write(probe / knob, _read(probe / knob).strip() or "max")
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
        _sweep(group, 1)


def _prepare_v2(base: Path) -> dict[str, Path] | str:
    available = _read(base / "cgroup.controllers").split()
    missing = [c for c in ("memory", "pids") if c not in available]
    if missing:
        return f"cgroup v2 at {base} does not offer {', '.join(missing)}"
    wanted = [c for c in CONTROLLERS if c in available]
    enable = " ".join(f"+{c}" for c in wanted)
    try:
        if not set(wanted) <= set(_read(base / "cgroup.subtree_control").split()):
            try:
                _write(base / "cgroup.subtree_control", enable)
            except OSError:
                # processes in base forbid enabling controllers below it: move them to a leaf
                leaf = base / NODE_LEAF
                leaf.mkdir(exist_ok=True)
                for pid in _read(base / "cgroup.procs").split():
                    with contextlib.suppress(OSError):
                        _write(leaf / "cgroup.procs", pid)
                _write(base / "cgroup.subtree_control", enable)
        group = base / GROUP
        group.mkdir(exist_ok=True)
        _write(group / "cgroup.subtree_control", enable)
    except OSError as exc:
        return f"cgroup v2 at {base} is not delegated to this process: {exc.strerror or exc}"
    _sweep(group, 2)
    return dict.fromkeys(wanted, group)


class RunCgroup:
    """One run's groups: join them (via ``procs_files``), read their events, kill, remove."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the run's wrapper writes its pid to (one per hierarchy)."""
        return [str(path / "cgroup.procs") for path in dict.fromkeys(self.dirs.values())]

    def apply(self, limits: CgroupLimits) -> None:
        """Write the limits into the groups."""
        memory, pids, cpu = self.dirs.get("memory"), self.dirs.get("pids"), self.dirs.get("cpu")
        if self.version == 2:
            if memory is not None and limits.memory_bytes is not None:
                _write(memory / "memory.max", str(limits.memory_bytes))
                with contextlib.suppress(OSError):
                    _write(memory / "memory.swap.max", "0")
            if pids is not None and limits.pids is not None:
                _write(pids / "pids.max", str(limits.pids))
            if cpu is not None and limits.cpus is not None:
                _write(cpu / "cpu.max", f"{max(1000, int(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            return
        if memory is not None and limits.memory_bytes is not None:
            _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if pids is not None and limits.pids is not None:
            _write(pids / "pids.max", str(limits.pids))
        if cpu is not None and limits.cpus is not None:
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))

    def oom_kills(self) -> int:
        """Processes the kernel killed for memory in this run."""
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        if self.version == 2:
            return _counter_of(_read(memory / "memory.events"), "oom_kill")
        return _counter_of(_read(memory / "memory.oom_control"), "oom_kill")

    def pid_limit_hits(self) -> int:
        """Forks refused because the run was at its process limit."""
        pids = self.dirs.get("pids")
        return 0 if pids is None else _counter_of(_read(pids / "pids.events"), "max")

    def pids(self) -> set[int]:
        """Every process now in the run's groups."""
        found: set[int] = set()
        for path in dict.fromkeys(self.dirs.values()):
            found.update(int(p) for p in _read(path / "cgroup.procs").split() if p.isdigit())
        return found

    def kill(self) -> None:
        """SIGKILL everything in the groups (``cgroup.kill`` where the kernel has it)."""
        if self.version == 2:
            for path in dict.fromkeys(self.dirs.values()):
                with contextlib.suppress(OSError):
                    _write(path / "cgroup.kill", "1")
                    return
        # v1: a fork racing the loop lands in the group too; each round kills what it finds,
        # and the run's pid-namespace init dies in the first, taking the namespace with it
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def try_remove(self) -> bool:
        """Kill what is left and remove the groups; False while dying processes still hold one."""
        if self.pids():
            self.kill()
        done = True
        for path in dict.fromkeys(self.dirs.values()):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done

    async def remove(self, grace_s: float = 5.0) -> None:
        """:meth:`try_remove` until it succeeds or ``grace_s`` pass (then the sweep takes it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while not self.try_remove() and loop.time() < deadline:
            await asyncio.sleep(0.005)

    def remove_blocking(self, grace_s: float = 5.0) -> None:
        """:meth:`remove` for synchronous callers (the availability probe)."""
        deadline = time.monotonic() + grace_s
        while not self.try_remove() and time.monotonic() < deadline:
            time.sleep(0.005)
