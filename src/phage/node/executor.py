"""Running one assignment: unpack the workspace, run it sandboxed, collect outputs."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from phage.domain import JobManifest, OutputFile, TaskResult
from phage.domain.generate import GenerateSpec, extract_output
from phage.domain.manifest import safe_relative_path
from phage.node.engines import Engine, GenerationRequest
from phage.sandbox import Sandbox, SandboxLimits, SandboxRequest
from phage.sandbox.workdir import unpack_workspace


@dataclass(frozen=True, slots=True)
class CollectedOutput:
    """An output file found after a run."""

    path: str
    local: Path
    sha256: str
    size: int


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

    def __init__(self, scratch_root: Path, log_bytes: int) -> None:
        self.scratch_root = scratch_root
        self.log_bytes = log_bytes
        scratch_root.mkdir(parents=True, exist_ok=True)

    def workdir(self, assignment_id: str) -> Path:
        """The scratch directory of one assignment."""
        return self.scratch_root / assignment_id

    async def run(
        self,
        sandbox: Sandbox,
        assignment_id: str,
        manifest: JobManifest,
        workspace: bytes | None,
        max_output_bytes: int,
    ) -> tuple[TaskResult, list[CollectedOutput]]:
        """Run the job; returns its result and the output files to upload."""
        started = time.monotonic()
        workdir = self.workdir(assignment_id)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        if workspace:
            await asyncio.to_thread(unpack_workspace, workspace, workdir)
        outcome = await sandbox.run(
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
        if outcome.killed_reason and f"killed: {outcome.killed_reason}" not in stderr:
            stderr += f"\n[phage] killed by the sandbox: {outcome.killed_reason} limit\n"
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

    async def run_generate(
        self,
        sandbox: Sandbox,
        assignment_id: str,
        gen: GenerateSpec,
        workspace: bytes | None,
        engine: Engine,
        max_output_bytes: int,
    ) -> tuple[TaskResult, list[CollectedOutput]]:
        """Generate with the engine, write the output into the workspace, run the verifier sandboxed."""
        started = time.monotonic()
        workdir = self.workdir(assignment_id)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        if workspace:
            await asyncio.to_thread(unpack_workspace, workspace, workdir)
        generation = await engine.generate(
            GenerationRequest(prompt=gen.prompt, max_tokens=gen.max_tokens, temperature=gen.temperature)
        )
        text = extract_output(generation.text, gen.extract)
        data = text.encode()
        if len(data) > max_output_bytes:
            return TaskResult(
                exit_code=-1, error=f"output is {len(data)} bytes; the limit is {max_output_bytes}"
            ), []
        target = workdir / gen.output_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        keep = self.scratch_root / f"{assignment_id}.output"
        keep.write_bytes(data)  # the verifier may change the file; upload what the model wrote
        outcome = await sandbox.run(
            SandboxRequest(
                argv=["/bin/sh", "-c", gen.verifier],
                workdir=workdir,
                limits=SandboxLimits(wall_s=float(gen.timeout_s), log_bytes=self.log_bytes),
            )
        )
        output = CollectedOutput(gen.output_path, keep, hashlib.sha256(data).hexdigest(), len(data))
        result = TaskResult(
            exit_code=outcome.exit_code,
            outputs=[OutputFile(output.path, output.sha256, output.size)],
            stdout_tail=outcome.stdout_tail,
            stderr_tail=outcome.stderr_tail,
            wall_time_s=time.monotonic() - started,
            passed=outcome.exit_code == 0,
            output_text=text,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            engine=engine.name,
            model=engine.model,
        )
        return result, [output]

    def cleanup(self, assignment_id: str) -> None:
        """Remove an assignment's scratch directory."""
        shutil.rmtree(self.workdir(assignment_id), ignore_errors=True)
        (self.scratch_root / f"{assignment_id}.output").unlink(missing_ok=True)
