"""Running one assignment: unpack the workspace, run it sandboxed, collect outputs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from phage.domain import JobManifest, OutputFile, TaskResult
from phage.domain.manifest import safe_relative_path
from phage.sandbox import Sandbox, SandboxLimits, SandboxRequest


@dataclass(frozen=True, slots=True)
class CollectedOutput:
    """An output file found after a run."""

    path: str
    local: Path
    sha256: str
    size: int


def unpack_workspace(archive: bytes, dest: Path) -> None:
    """Extract a workspace archive with the ``data`` filter (no links out, no devices)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        tar.extractall(dest, filter="data")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def collect_outputs(
    workdir: Path, patterns: tuple[str, ...], max_bytes: int
) -> tuple[list[CollectedOutput], str]:
    """Regular files matching the globs, inside the workdir; returns (outputs, problem)."""
    root = workdir.resolve()
    found: dict[str, CollectedOutput] = {}
    for pattern in patterns:
        for path in sorted(workdir.glob(pattern)):
            if path.is_symlink() or not path.is_file():
                continue
            real = path.resolve()
            if not real.is_relative_to(root):
                continue
            rel = real.relative_to(root).as_posix()
            safe_relative_path(rel, "output")
            size = real.stat().st_size
            if size > max_bytes:
                return [], f"output {rel!r} is {size} bytes; the limit is {max_bytes}"
            found[rel] = CollectedOutput(rel, real, _sha256(real), size)
    return list(found.values()), ""


class JobExecutor:
    """Runs job assignments in per-assignment scratch directories."""

    def __init__(self, sandbox: Sandbox, scratch_root: Path, log_bytes: int) -> None:
        self.sandbox = sandbox
        self.scratch_root = scratch_root
        self.log_bytes = log_bytes
        scratch_root.mkdir(parents=True, exist_ok=True)

    def workdir(self, assignment_id: str) -> Path:
        """The scratch directory of one assignment."""
        return self.scratch_root / assignment_id

    async def run(
        self, assignment_id: str, manifest: JobManifest, workspace: bytes | None, max_output_bytes: int
    ) -> tuple[TaskResult, list[CollectedOutput]]:
        """Run the job; returns its result and the output files to upload."""
        started = time.monotonic()
        workdir = self.workdir(assignment_id)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        if workspace:
            await asyncio.to_thread(unpack_workspace, workspace, workdir)
        outcome = await self.sandbox.run(
            SandboxRequest(
                argv=manifest.command(),
                workdir=workdir,
                env=dict(manifest.env),
                limits=SandboxLimits(wall_s=float(manifest.timeout_s), log_bytes=self.log_bytes),
            )
        )
        outputs, problem = await asyncio.to_thread(
            collect_outputs, workdir, manifest.outputs, max_output_bytes
        )
        exit_code = outcome.exit_code
        stderr = outcome.stderr_tail
        if problem:
            exit_code = exit_code or 1
            stderr += f"\n[phage] {problem}\n"
        result = TaskResult(
            exit_code=exit_code,
            outputs=[OutputFile(o.path, o.sha256, o.size) for o in outputs],
            stdout_tail=outcome.stdout_tail,
            stderr_tail=stderr,
            wall_time_s=time.monotonic() - started,
        )
        return result, outputs

    def cleanup(self, assignment_id: str) -> None:
        """Remove an assignment's scratch directory."""
        shutil.rmtree(self.workdir(assignment_id), ignore_errors=True)
