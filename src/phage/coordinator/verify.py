"""Re-verification: the coordinator re-runs a generate task's verifier on a claimed pass.

The candidate output is written into a fresh copy of the task's workspace and
the verifier runs there in the coordinator's own sandbox, exactly as the node
should have run it. A claimed pass that fails here means the node lied.

The workspace is a scratch volume of the job's cap where the coordinator can make
one (it runs as root): the verifier is the user's command, and the coordinator's
disk holds its database.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from phage.domain.generate import GenerateSpec
from phage.sandbox import Sandbox, SandboxLimits, SandboxRequest
from phage.sandbox.scratch import ScratchVolumes
from phage.sandbox.workdir import unpack_workspace


@dataclass(frozen=True, slots=True)
class Verdict:
    """The coordinator's own verifier run."""

    passed: bool
    exit_code: int
    log_tail: str


def _volumes() -> ScratchVolumes | None:
    found = ScratchVolumes.detect()
    return found if isinstance(found, ScratchVolumes) else None


def _prepare(
    root: Path, workspace: bytes | None, output_path: str, output_text: str, limits: SandboxLimits
) -> Path:
    workdir = root / f"verify-{secrets.token_hex(8)}"
    volumes = _volumes()
    if volumes is not None and limits.scratch_bytes is not None:
        volumes.create(workdir, limits.scratch_bytes)
    else:
        workdir.mkdir(mode=0o700)
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
    limits = SandboxLimits(wall_s=float(generate.timeout_s), log_bytes=8192)
    workdir = await asyncio.to_thread(
        _prepare, scratch_root, workspace, generate.output_path, output_text, limits
    )
    try:
        outcome = await sandbox.run(
            SandboxRequest(argv=["/bin/sh", "-c", generate.verifier], workdir=workdir, limits=limits)
        )
    finally:
        await asyncio.to_thread(_remove, workdir)
    return Verdict(
        outcome.exit_code == 0, outcome.exit_code, (outcome.stdout_tail + outcome.stderr_tail)[-2000:]
    )


def _remove(workdir: Path) -> None:
    volumes = _volumes()
    if volumes is not None:
        volumes.release(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
