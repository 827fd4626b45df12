"""Re-verification: the coordinator re-runs a generate task's verifier on a claimed pass.

The candidate output is written into a fresh copy of the task's workspace and
the verifier runs there in the coordinator's own sandbox, exactly as the node
should have run it. A claimed pass that fails here means the node lied.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from phage.domain.generate import GenerateSpec
from phage.sandbox import Sandbox, SandboxLimits, SandboxRequest
from phage.sandbox.workdir import unpack_workspace


@dataclass(frozen=True, slots=True)
class Verdict:
    """The coordinator's own verifier run."""

    passed: bool
    exit_code: int
    log_tail: str


def _prepare(root: Path, workspace: bytes | None, output_path: str, output_text: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="verify-", dir=root))
    if workspace:
        unpack_workspace(workspace, workdir)
    target = workdir / output_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(output_text)
    return workdir


async def reverify(
    sandbox: Sandbox, scratch_root: Path, workspace: bytes | None, generate: GenerateSpec, output_text: str
) -> Verdict:
    """Run ``generate.verifier`` against ``output_text`` in the coordinator's sandbox."""
    scratch_root.mkdir(parents=True, exist_ok=True)
    workdir = await asyncio.to_thread(_prepare, scratch_root, workspace, generate.output_path, output_text)
    try:
        outcome = await sandbox.run(
            SandboxRequest(
                argv=["/bin/sh", "-c", generate.verifier],
                workdir=workdir,
                limits=SandboxLimits(wall_s=float(generate.timeout_s), log_bytes=8192),
            )
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return Verdict(
        outcome.exit_code == 0, outcome.exit_code, (outcome.stdout_tail + outcome.stderr_tail)[-2000:]
    )
