"""What the isolating backends ask of bwrap and runsc, checked without running them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from phage.errors import InvalidInput, SandboxError
from phage.sandbox import registry
from phage.sandbox.base import SandboxLimits, SandboxRequest
from phage.sandbox.bwrap import HostTools, bwrap_options, wrapper_argv
from phage.sandbox.cgroups import RunCgroup
from phage.sandbox.gvisor import oci_spec
from phage.sandbox.rootfs import Stage

REQUEST = SandboxRequest(
    ["/usr/bin/python3", "main.py"],
    Path("/var/lib/phage/node/work/a-1"),
    env={"API_TOKEN": "s3cret"},
    limits=SandboxLimits(memory_bytes=1 << 30, pids=100, scratch_bytes=1 << 28, tmp_bytes=1 << 24),
)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Stage:
    etc = tmp_path_factory.mktemp("etc")
    (etc / "ld.so.cache").write_bytes(b"cache")
    (etc / "shadow").write_text("root:$6$secret")
    (etc / "ssl" / "certs").mkdir(parents=True)
    (etc / "ssl" / "certs" / "ca.pem").write_text("CERT")
    (etc / "ssl" / "private").mkdir()
    (etc / "ssl" / "private" / "host.key").write_text("KEY")
    (etc / "localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    return Stage(tmp_path_factory.mktemp("stage"), etc_source=etc)


def test_stage_copies_only_public_etc_and_synthesises_users(stage: Stage) -> None:
    files = set(stage.etc_files)
    assert {"ld.so.cache", "ssl/certs/ca.pem", "localtime", "passwd", "group", "nsswitch.conf"} <= files
    assert not {f for f in files if "shadow" in f or "private" in f}
    assert "nobody:x:65534:65534:nobody:/workspace:" in (stage.etc / "passwd").read_text()
    for path in stage.root.rglob("*"):
        if not path.is_symlink():
            assert path.stat().st_mode & stat.S_IROTH, path
    assert os.readlink(stage.etc / "localtime") == "/usr/share/zoneinfo/Etc/UTC"


def test_bwrap_binds_only_what_programs_need(stage: Stage) -> None:
    opts = bwrap_options(REQUEST, stage=stage, source="/src", seccomp_fd=7)
    binds = [(opts[i], opts[i + 1], opts[i + 2]) for i, o in enumerate(opts) if o.endswith("bind")]
    sources = {src for _, src, _ in binds}
    assert "/" not in sources and not {
        s for s in sources if s.startswith(("/home", "/root", "/var", "/work"))
    }
    assert ("--ro-bind", "/usr", "/usr") in binds
    assert ("--ro-bind", str(stage.etc), "/etc") in binds
    assert ("--bind", "/src", "/workspace") in binds
    assert [b for b in binds if b[0] == "--bind"] == [("--bind", "/src", "/workspace")]
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--clearenv"):
        assert flag in opts
    assert opts[:2] == ["--seccomp", "7"]
    assert opts[opts.index("--uid") + 1] == "65534" and opts[opts.index("--gid") + 1] == "65534"
    remounts = [opts[i + 1] for i, o in enumerate(opts) if o == "--remount-ro"]
    assert remounts[-1] == "/"  # the root is read-only, after every mount is in place
    i = opts.index("API_TOKEN")
    assert opts[i - 1 : i + 2] == ["--setenv", "API_TOKEN", "s3cret"]


def test_privileged_wrapper_joins_binds_and_drops_before_bwrap(stage: Stage) -> None:
    tools = HostTools(
        {n: f"/usr/bin/{n}" for n in ("bwrap", "prlimit", "sh", "setpriv", "unshare", "mount")},
        privileged=True,
        cgroups=None,
        cgroup_problem="",
        version="bubblewrap 0.8.0",
    )
    cgroup = RunCgroup(1, {"memory": Path("/cg/memory/run"), "pids": Path("/cg/pids/run")})
    argv = wrapper_argv(REQUEST, tools=tools, stage=stage, cgroup=cgroup, args_fd=9)
    assert argv[:5] == ["/usr/bin/unshare", "--mount", "--propagation", "private", "--"]
    assert "/cg/memory/run/cgroup.procs" in argv and "/cg/pids/run/cgroup.procs" in argv
    assert argv[argv.index(str(REQUEST.workdir)) + 1] == str(stage.mnt)
    order = [argv.index(f"/usr/bin/{n}") for n in ("sh", "setpriv", "bwrap")]
    assert order == sorted(order)
    script = argv[argv.index("/usr/bin/sh") + 2]
    assert script.index("echo $$") < script.index("mount --bind") < script.index("ulimit -f")
    assert "/usr/bin/prlimit" not in argv  # the pids cgroup does it; NPROC is only a fallback
    assert "--reuid=65534" in argv and "--bounding-set=-all" in argv and "--no-new-privs" in argv
    assert "--as=1073741824" not in argv  # the memory cgroup does it
    assert "s3cret" not in " ".join(argv)  # the task's environment travels in the memfd only
    assert argv[-3:] == ["--", "/usr/bin/python3", "main.py"]


def test_gvisor_spec_is_read_only_unprivileged_and_offline(stage: Stage) -> None:
    cgroup = RunCgroup(1, {"memory": Path("/cg/m"), "pids": Path("/cg/p")})
    spec = oci_spec(REQUEST, stage=stage, cgroup=cgroup)
    assert spec["root"] == {"path": str(stage.rootfs), "readonly": True}
    process = spec["process"]
    assert process["user"]["uid"] == 65534 and process["user"]["gid"] == 65534
    assert process["noNewPrivileges"] and not any(process["capabilities"].values())
    assert "API_TOKEN=s3cret" in process["env"] and process["cwd"] == "/workspace"
    binds = {m["destination"]: m for m in spec["mounts"] if m["type"] == "bind"}
    assert binds["/usr"]["source"] == "/usr" and "ro" in binds["/usr"]["options"]
    assert binds["/workspace"]["source"] == str(REQUEST.workdir) and "rw" in binds["/workspace"]["options"]
    assert [d for d, m in binds.items() if "rw" in m["options"]] == ["/workspace"]
    assert {"type": "network"} in spec["linux"]["namespaces"]
    rlimits = {r["type"]: r["hard"] for r in process["rlimits"]}
    assert rlimits["RLIMIT_FSIZE"] == 1 << 28 and rlimits["RLIMIT_NPROC"] == 100
    assert "RLIMIT_AS" not in rlimits


def test_bwrap_is_the_default_and_none_is_never_automatic(monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry.STRONGEST_FIRST == ("gvisor", "bwrap")
    assert registry.DEFAULT_FIRST == ("bwrap", "gvisor")
    assert "none" not in registry.DEFAULT_FIRST
    reasons: dict[str, str | None] = {"gvisor": None, "bwrap": None, "none": None}
    for name, cls in registry.BACKENDS.items():
        monkeypatch.setattr(cls, "unavailable_reason", classmethod(lambda c, n=name: reasons[n]))
    assert registry.make_sandbox(None).name == "bwrap", "bwrap first where both work"
    reasons["gvisor"] = "runsc is not installed"
    assert registry.make_sandbox(None).name == "bwrap"
    reasons["gvisor"], reasons["bwrap"] = None, "missing bwrap"
    assert registry.make_sandbox(None).name == "gvisor", "gVisor where bwrap does not work"
    reasons["gvisor"] = "runsc is not installed"
    with pytest.raises(SandboxError, match="no isolating sandbox backend"):
        registry.make_sandbox(None)
    with pytest.raises(SandboxError, match="runsc is not installed"):
        registry.make_sandbox("gvisor")
    assert registry.make_sandbox("none").name == "none"


@pytest.mark.parametrize(
    "argv, env",
    [
        (["/bin/true"], {"X": "a\0--bind\0/\0/host"}),
        (["/bin/true"], {"A=B": "c"}),
        (["/bin/true", "a\0b"], {}),
        ([], {}),
    ],
)
def test_requests_that_could_smuggle_options_are_refused(
    stage: Stage, argv: list[str], env: dict[str, str]
) -> None:
    request = SandboxRequest(argv, Path("/w"), env=env)
    with pytest.raises(InvalidInput):
        bwrap_options(request, stage=stage, source="/src")
    with pytest.raises(InvalidInput):
        oci_spec(request, stage=stage, cgroup=None)
