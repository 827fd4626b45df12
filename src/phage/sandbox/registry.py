"""Which backends exist, which work here, and how to make one by name."""

from __future__ import annotations

from phage.errors import SandboxError
from phage.sandbox.base import Sandbox
from phage.sandbox.bwrap import BwrapSandbox
from phage.sandbox.gvisor import GvisorSandbox
from phage.sandbox.none import NoneSandbox

BACKENDS: dict[str, type[Sandbox]] = {"gvisor": GvisorSandbox, "bwrap": BwrapSandbox, "none": NoneSandbox}
STRONGEST_FIRST: tuple[str, ...] = ("gvisor", "bwrap")
"""Real isolation backends, strongest first; ``none`` is never picked automatically.

gVisor is the stronger: a task's system calls reach a user-space kernel, so a
host kernel bug reachable from the task is not enough to escape, where under
bwrap the task talks to the host kernel directly (namespaces and a seccomp
filter, not a kernel boundary).
"""
DEFAULT_FIRST: tuple[str, ...] = ("bwrap", "gvisor")
"""The order a node prefers backends in for tasks that ask for ``any``: bwrap, then gVisor.

bwrap (namespaces, seccomp, cgroups, a read-only minimal root) starts a run in
about 20 ms; gVisor on this platform (ptrace; Debian's runsc has no systrap and
KVM hangs in nested VMs) costs about 150 ms more per run and slows every system
call, which made a short job four times slower end to end (BENCHMARKS.md, "Short
jobs"). So bwrap is the default and gVisor stays on offer, next to it, for
tasks that require it (``isolation: "gvisor"``); gVisor is the default only
where bwrap does not work.
"""


def available_backends() -> dict[str, str | None]:
    """Each backend's name → None if usable here, else why not."""
    return {name: cls.unavailable_reason() for name, cls in BACKENDS.items()}


def make_sandbox(name: str | None) -> Sandbox:
    """The named backend, or the default working one (``DEFAULT_FIRST``) when ``name`` is None."""
    if name is None:
        for candidate in DEFAULT_FIRST:
            if BACKENDS[candidate].unavailable_reason() is None:
                return BACKENDS[candidate]()
        raise SandboxError(
            "no isolating sandbox backend works on this machine; "
            "pass --sandbox none to run tasks unisolated (trusted development only)"
        )
    cls = BACKENDS.get(name)
    if cls is None:
        raise SandboxError(f"unknown sandbox backend {name!r}; known: {', '.join(BACKENDS)}", field="sandbox")
    reason = cls.unavailable_reason()
    if reason is not None:
        raise SandboxError(f"sandbox backend {name!r} is unavailable here: {reason}", field="sandbox")
    return cls()
