"""Finding a writable cgroup hierarchy (v1 or v2) and writing one run's limits, on fake trees."""

from __future__ import annotations

from pathlib import Path

from phage.sandbox.cgroups import GROUP, CgroupLimits, Cgroups, _parse_mounts, _parse_own

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / {root}/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"


def _proc(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_parses_v1_and_v2_mounts_and_own_groups() -> None:
    mounts = _parse_mounts(HYBRID_MOUNTINFO.format(root="/sys/fs/cgroup"))
    assert [(str(m.path), m.version, sorted(m.controllers)) for m in mounts] == [
        ("/sys/fs/cgroup/cpu", 1, ["cpu"]),
        ("/sys/fs/cgroup/memory", 1, ["memory"]),
        ("/sys/fs/cgroup/pids", 1, ["pids"]),
        ("/sys/fs/cgroup/unified", 2, []),
    ]
    assert _parse_own(HYBRID_CGROUP) == {"pids": "/", "memory": "/process_api/abc", "cpu": "/", "": "/"}


def test_hybrid_machine_uses_v1_at_the_controller_roots(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for sub in ("cpu", "memory/process_api/abc", "pids", "unified"):
        (root / sub).mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")  # no memory in v2 here
    found = Cgroups.detect(_proc(tmp_path, HYBRID_MOUNTINFO.format(root=root), HYBRID_CGROUP))
    assert isinstance(found, Cgroups), found
    assert found.version == 1
    assert found.groups == {
        "memory": root / "memory" / GROUP,
        "pids": root / "pids" / GROUP,
        "cpu": root / "cpu" / GROUP,
    }
    run = found.create(CgroupLimits(memory_bytes=64 << 20, pids=32, cpus=0.5))
    assert (run.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (run.dirs["pids"] / "pids.max").read_text() == "32"
    assert (run.dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    assert len(run.procs_files) == 3


def test_v1_falls_back_to_the_own_group_where_the_root_is_not_writable(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "memory" / "mine").mkdir(parents=True)
    (root / "memory" / GROUP).write_text("a file, so no group can be made here")
    mountinfo = f"35 31 0:32 / {root}/memory rw - cgroup cgroup rw,memory\n"
    found = Cgroups.detect(_proc(tmp_path, mountinfo, "4:memory:/mine\n"))
    assert isinstance(found, Cgroups)
    assert found.groups == {"memory": root / "memory" / "mine" / GROUP}


def test_pure_v2_enables_controllers_and_writes_limits(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    base = root / "system.slice" / "phage.service"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    mountinfo = f"29 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n"
    found = Cgroups.detect(_proc(tmp_path, mountinfo, "0::/system.slice/phage.service\n"))
    assert isinstance(found, Cgroups), found
    assert found.version == 2 and found.controllers == ("memory", "pids", "cpu")
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (base / GROUP / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    run = found.create(CgroupLimits(memory_bytes=1 << 30, pids=100, cpus=2))
    path = run.dirs["memory"]
    assert set(run.dirs.values()) == {path} and run.procs_files == [str(path / "cgroup.procs")]
    assert (path / "memory.max").read_text() == str(1 << 30)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "pids.max").read_text() == "100"
    assert (path / "cpu.max").read_text() == "200000 100000"
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (path / "pids.events").write_text("max 0\n")
    assert run.oom_kills() == 1 and run.pid_limit_hits() == 0


def test_v2_without_memory_is_refused_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu pids\n")
    found = Cgroups.detect(_proc(tmp_path, f"29 23 0:26 / {root} rw - cgroup2 cgroup2 rw\n", "0::/\n"))
    assert isinstance(found, str) and "does not offer memory" in found


def test_nothing_mounted_says_so(tmp_path: Path) -> None:
    found = Cgroups.detect(_proc(tmp_path, "", ""))
    assert found == "no cgroup v1 or v2 hierarchy is mounted"


def test_stale_run_groups_of_dead_processes_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "pids" / GROUP / "run-999999999-0-abc").mkdir(parents=True)
    (root / "pids" / GROUP / "run-1-0-abc").mkdir(parents=True)  # pid 1 lives: kept
    mountinfo = f"39 31 0:36 / {root}/pids rw - cgroup cgroup rw,pids\n"
    found = Cgroups.detect(_proc(tmp_path, mountinfo, "8:pids:/\n"))
    assert isinstance(found, Cgroups)
    left = sorted(p.name for p in (root / "pids" / GROUP).iterdir() if "probe" not in p.name)
    assert left == ["run-1-0-abc"]  # (a fake tree keeps the probe group: its knob is a real file)
