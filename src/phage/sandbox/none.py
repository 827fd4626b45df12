"""The ``none`` backend: a plain subprocess in the task's scratch directory.

No isolation at all beyond a clean environment and a wall-clock limit. It
exists for trusted development and must be chosen explicitly (``--sandbox
none``); a node never falls back to it on its own.
"""

from __future__ import annotations

import os

from phage.sandbox.base import Sandbox, SandboxOutcome, SandboxRequest
from phage.sandbox.process import run_process

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NoneSandbox(Sandbox):
    """Unisolated execution (explicit opt-in only)."""

    name = "none"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Always available."""
        return None

    async def run(self, request: SandboxRequest) -> SandboxOutcome:
        """Run in the workdir with a minimal environment."""
        env = {
            "PATH": os.environ.get("PATH", BASE_PATH),
            "HOME": str(request.workdir),
            "TMPDIR": str(request.workdir),
            "LANG": "C.UTF-8",
            **request.env,
        }
        argv = list(request.argv)
        if argv and argv[0].startswith("./"):
            argv[0] = str(request.workdir / argv[0][2:])
        return await run_process(
            argv,
            cwd=str(request.workdir),
            env=env,
            wall_s=request.limits.wall_s,
            log_bytes=request.limits.log_bytes,
            output_bytes=request.limits.output_bytes,
        )
