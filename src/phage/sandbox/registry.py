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

gVisor comes first: a task's system calls reach a user-space kernel, so a host
kernel bug reachable from the task is not enough to escape, where under bwrap
the task talks to the host kernel directly (namespaces, not a kernel boundary).
Its price — about 0.2 s more to start and slower system calls — is small
against the tasks phage runs. bwrap is the fallback wherever runsc is missing or
cannot run (no root, no ptrace), and the backend for work gVisor cannot do.
"""


def available_backends() -> dict[str, str | None]:
    """Each backend's name → None if usable here, else why not."""
    return {name: cls.unavailable_reason() for name, cls in BACKENDS.items()}


def make_sandbox(name: str | None) -> Sandbox:
    """The named backend, or the strongest working one when ``name`` is None."""
    if name is None:
        for candidate in STRONGEST_FIRST:
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
