"""The sandbox interface.

A backend runs one argv in one workspace directory under limits and reports
how it ended. Backends differ only in isolation; the node treats them alike,
and refuses a task whose required isolation its backend cannot give.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from pathlib import Path


class KillReason(enum.StrEnum):
    """Why the sandbox ended a run (``SandboxOutcome.killed_reason``); a ``str``, so JSON-ready."""

    TIMEOUT = "timeout"
    """The wall-clock limit passed."""
    MEMORY = "memory"
    """The memory limit was reached and the kernel (or gVisor) killed a process."""
    PIDS = "pids"
    """The run tried to hold more processes or threads than its limit."""
    OUTPUT = "output"
    """stdout and stderr together passed ``SandboxLimits.output_bytes``."""
    SCRATCH = "scratch"
    """The workspace grew past ``SandboxLimits.scratch_bytes`` (or a file past it)."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Bounds on one run; ``None`` leaves that bound to the backend's default."""

    wall_s: float = 300.0
    memory_bytes: int | None = 2 * 1024**3
    cpus: float | None = None
    """CPU bandwidth in cores (``1.5`` = one and a half cores); None: unbounded."""
    pids: int | None = 256
    """Processes and threads the run may hold at once."""
    log_bytes: int = 64 * 1024
    """How much of stdout and stderr is kept (the tail); the rest is read and dropped."""
    scratch_bytes: int | None = 1024**3
    """Disk the workspace may use, inputs included; a single file may not pass it either."""
    output_bytes: int | None = 64 * 1024**2
    """stdout and stderr together; a run that prints more is killed (``KillReason.OUTPUT``)."""
    tmp_bytes: int = 64 * 1024**2
    """Size of the private in-memory ``/tmp`` of isolating backends (it also counts as memory)."""


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """What to run and where."""

    argv: list[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)


@dataclass(frozen=True, slots=True)
class SandboxOutcome:
    """How a run ended."""

    exit_code: int
    stdout_tail: str
    stderr_tail: str
    wall_s: float
    timed_out: bool = False
    killed_reason: str = ""
    """Empty when the run ended by itself, else a :class:`KillReason` value."""


class Sandbox(abc.ABC):
    """A way to run untrusted commands."""

    name: str = ""
    """Backend name as tasks and nodes refer to it: ``none``, ``bwrap``, ``gvisor``."""

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None when this backend works on this machine, else why not."""

    @abc.abstractmethod
    async def run(self, request: SandboxRequest) -> SandboxOutcome:
        """Run ``request.argv`` in ``request.workdir`` under ``request.limits``."""

    def describe(self) -> dict[str, object]:
        """The backend's configuration, for logs and (later) attestation hashes.

        Deterministic for one configuration on one kind of machine: no temporary
        paths, no per-run values, so equal descriptions hash equal.
        """
        return {"backend": self.name}
