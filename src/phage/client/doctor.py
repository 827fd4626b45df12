"""``phage doctor``: what this machine lacks to be a coordinator or a node, and how to fix each thing.

Each check is a small function returning a :class:`Finding`; none changes the machine. The checks
reuse the code that decides at run time (the sandbox registry, cgroup detection, the NVML probe,
engine detection), so the doctor and the node never disagree about what works here. Imports of
the coordinator and node extras happen inside the checks: on a client-only install the doctor
still runs and says which extra to add.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Level(StrEnum):
    """How bad a finding is."""

    OK = "ok"
    WARN = "warn"
    """Works, but something is missing or weaker than it could be."""
    FAIL = "fail"
    """The role cannot run here as configured."""


@dataclass(frozen=True)
class Finding:
    """One check's verdict, and what to do about it."""

    check: str
    level: Level
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Context:
    """What the checks look at: the ports and directories the configuration names."""

    ports: tuple[tuple[str, str, int], ...] = ()
    """(what, host, port) the coordinator would listen on."""
    dirs: tuple[Path, ...] = ()
    """Data and key directories (their file systems need room)."""
    min_free_bytes: int = 5 * 2**30


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_python(_: Context) -> list[Finding]:
    """The interpreter phage runs on (the package itself requires 3.11 or later)."""
    return [
        Finding("python", Level.OK, f"Python {'.'.join(map(str, sys.version_info[:3]))} at {sys.executable}")
    ]


def check_extras(_: Context) -> list[Finding]:
    """The coordinator and node extras (a client-only install has neither)."""
    needs = {
        "coordinator": ("grpc", "fastapi", "uvicorn", "sqlalchemy", "alembic", "cryptography"),
        "node": ("grpc", "cryptography", "psutil", "aiohttp"),
    }
    out = []
    for extra, modules in needs.items():
        missing = [m for m in modules if not _has(m)]
        if missing:
            out.append(
                Finding(
                    f"{extra} extra",
                    Level.WARN,
                    f"missing {', '.join(missing)}: this install cannot run `phage {extra}`",
                    f"pip install 'phage[{extra}]'",
                )
            )
        else:
            out.append(Finding(f"{extra} extra", Level.OK, "installed"))
    return out


def check_sandboxes(_: Context) -> list[Finding]:
    """gVisor and bubblewrap: a node runs tasks only in a sandbox that works here."""
    if not _has("phage.sandbox"):  # pragma: no cover - the package always ships it
        return []
    from phage.sandbox.registry import STRONGEST_FIRST, available_backends

    found = available_backends()
    working = [name for name in STRONGEST_FIRST if found.get(name) is None]
    fixes = {
        "gvisor": "apt-get install runsc (gVisor), or see gvisor.dev for other systems",
        "bwrap": "apt-get install bubblewrap; allow unprivileged user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1)",
    }
    out = []
    for name in STRONGEST_FIRST:
        reason = found.get(name)
        if reason is None:
            out.append(Finding(f"sandbox {name}", Level.OK, "works"))
        else:
            level = Level.WARN if working else Level.FAIL
            out.append(Finding(f"sandbox {name}", level, reason, fixes.get(name, "")))
    return out


def check_cgroups(_: Context) -> list[Finding]:
    """A writable cgroup hierarchy, for per-task memory, CPU and process limits."""
    from phage.sandbox.cgroups import Cgroups

    found = Cgroups.detect()
    if isinstance(found, str):
        return [
            Finding(
                "cgroups",
                Level.WARN,
                f"no usable cgroups ({found}); tasks get rlimits only",
                "run the node as root, or under systemd with Delegate=yes (deploy/phage-node.service)",
            )
        ]
    controllers = ", ".join(found.controllers) or "none"
    return [Finding("cgroups", Level.OK, f"cgroup v{found.version}: {controllers}")]


def check_gpus(_: Context) -> list[Finding]:
    """NVIDIA GPUs through NVML (optional: without one a node serves CPU work)."""
    if not _has("pynvml"):
        return [
            Finding("gpu (NVML)", Level.WARN, "nvidia-ml-py is not installed", "pip install 'phage[node]'")
        ]
    from phage.node.probe import probe_hardware

    hw = probe_hardware()
    gpus = hw.get("gpus") or []
    if not gpus:
        return [
            Finding(
                "gpu (NVML)",
                Level.OK,
                "no NVIDIA GPU or driver: this node offers CPU and RAM only",
                "for GPU work install the NVIDIA driver (nvidia-smi must work)",
            )
        ]
    names = ", ".join(str(g.get("model", "?")) for g in gpus)
    return [
        Finding(
            "gpu (NVML)", Level.OK, f"{len(gpus)} GPU(s): {names}; driver {hw.get('driver_version', '?')}"
        )
    ]


def check_engines(_: Context) -> list[Finding]:
    """Inference engines a node could run (optional: a node without one runs jobs)."""
    engines = {
        "vllm": bool(shutil.which("vllm")) or _has("vllm"),
        "llamacpp": bool(shutil.which("llama-server")),
        "transformers": _has("transformers") and _has("torch"),
    }
    have = [name for name, ok in engines.items() if ok]
    if have:
        return [
            Finding("engines", Level.OK, "available: " + ", ".join(have) + "; openai (any server) always")
        ]
    return [
        Finding(
            "engines",
            Level.WARN,
            "none installed: this node runs jobs only (or --engine openai against a server)",
            "pip install 'phage[transformers]' or 'phage[vllm]', or put llama.cpp's llama-server on PATH",
        )
    ]


def check_ports(ctx: Context) -> list[Finding]:
    """The coordinator's ports are free (or already phage's)."""
    out = []
    for what, host, port in ctx.ports:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                out.append(
                    Finding(
                        f"port {port}",
                        Level.WARN,
                        f"{what} on {host}:{port} cannot listen: {exc.strerror} "
                        "(fine if a coordinator is already running there)",
                        f"stop what holds it (ss -ltnp 'sport = :{port}') or choose another port",
                    )
                )
                continue
        out.append(Finding(f"port {port}", Level.OK, f"{what} on {host}:{port} is free"))
    return out


def check_clock(_: Context) -> list[Finding]:
    """A synchronised clock: certificates and leases compare times across machines."""
    if shutil.which("timedatectl"):
        try:
            done = subprocess.run(
                ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
                capture_output=True,
                text=True,
                timeout=5,
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
            if done.stdout.strip() == "yes":
                return [Finding("clock", Level.OK, "synchronised (NTP)")]
            return [
                Finding(
                    "clock",
                    Level.WARN,
                    "not synchronised",
                    "timedatectl set-ntp true (or run chrony / systemd-timesyncd)",
                )
            ]
    if Path("/run/systemd/timesync/synchronized").exists():
        return [Finding("clock", Level.OK, "synchronised (systemd-timesyncd)")]
    return [
        Finding(
            "clock",
            Level.WARN,
            "cannot tell whether the clock is synchronised",
            "run an NTP client (chrony or systemd-timesyncd)",
        )
    ]


def check_disk(ctx: Context) -> list[Finding]:
    """Room for the database, blobs, workspaces and models."""
    out = []
    for d in ctx.dirs:
        probe = d
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        gib = free / 2**30
        if free < ctx.min_free_bytes:
            out.append(
                Finding(
                    f"disk {d}",
                    Level.WARN,
                    f"{gib:.1f} GiB free",
                    f"free space, or point it at a larger disk (want ≥ {ctx.min_free_bytes / 2**30:.0f} GiB)",
                )
            )
        else:
            out.append(Finding(f"disk {d}", Level.OK, f"{gib:.1f} GiB free"))
    return out


CHECKS: tuple[Callable[[Context], list[Finding]], ...] = (
    check_python,
    check_extras,
    check_sandboxes,
    check_cgroups,
    check_gpus,
    check_engines,
    check_ports,
    check_clock,
    check_disk,
)


def diagnose(ctx: Context) -> list[Finding]:
    """Every check; one that crashes is itself a finding, never the end of the report."""
    out: list[Finding] = []
    for check in CHECKS:
        try:
            out.extend(check(ctx))
        except Exception as exc:  # a doctor must report, not die
            name = check.__name__.removeprefix("check_")
            out.append(Finding(name, Level.WARN, f"check failed: {type(exc).__name__}: {exc}"))
    return out
