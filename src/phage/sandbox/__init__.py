"""Sandboxes: the one interface every task runs through, and its backends."""

from phage.sandbox.base import KillReason, Sandbox, SandboxLimits, SandboxOutcome, SandboxRequest
from phage.sandbox.registry import available_backends, make_sandbox

__all__ = [
    "KillReason",
    "Sandbox",
    "SandboxLimits",
    "SandboxOutcome",
    "SandboxRequest",
    "available_backends",
    "make_sandbox",
]
