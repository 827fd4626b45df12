"""Which backends exist, which work here, and how to make one by name."""

from __future__ import annotations

from phage.errors import SandboxError
from phage.sandbox.base import Sandbox
from phage.sandbox.none import NoneSandbox

BACKENDS: dict[str, type[Sandbox]] = {"none": NoneSandbox}
STRONGEST_FIRST: tuple[str, ...] = ()
"""Real isolation backends in order of preference; ``none`` is never picked automatically."""


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
