"""Running one assignment: unpack the workspace, run it sandboxed, collect outputs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from phage.domain import JobManifest, OutputFile, TaskResult
from phage.domain.generate import GenerateSpec, extract_output
from phage.node.engines import Engine, GenerationRequest
from phage.node.outputs import CollectedOutput, collect_outputs
from phage.sandbox import Sandbox, SandboxLimits, SandboxRequest
from phage.sandbox.scratch import ScratchVolumes, make_workspace, remove_entries, remove_workspace
from phage.sandbox.warm import WarmPool, WarmSandbox
from phage.sandbox.workdir import unpack_workspace

__all__ = ["CollectedOutput", "JobExecutor", "collect_outputs"]
log = logging.getLogger(__name__)
COPY_OUT_BYTES = 8 * 1024**2
"""Outputs of a warm sandbox's task up to this much in all are copied out so the sandbox can be
reused at once; above it the sandbox is retired and its workspace kept until the upload."""


def _unpack_and_grant(workspace: bytes | None, lease: WarmSandbox) -> None:
    """Unpack into a warm sandbox's workspace and hand it to the sandbox's uid, in one thread hop."""
    if workspace:
        unpack_workspace(workspace, lease.workdir)
    lease.grant()


class JobExecutor:
    """Runs job assignments in per-assignment scratch directories.

    With ``volumes`` each directory is its own filesystem of the scratch cap (the
    kernel enforces it); without, the sandbox's guard polls the directory's size.
    Whatever is in a ``scratch_root`` the executor made (it holds ``MARK``) when
    the executor starts is a crashed run's leftover, and is removed first; a
    directory the executor did not make is never emptied.

    With ``warm``, bwrap runs go to warm sandboxes (``phage.sandbox.warm``): the
    workspace is unpacked straight into the sandbox's own, and the outputs are
    copied out (or the workspace kept, for large ones) before it is scrubbed.
    """

    MARK = ".phage-scratch"

    def __init__(
        self,
        scratch_root: Path,
        log_bytes: int,
        volumes: ScratchVolumes | None = None,
        warm: WarmPool | None = None,
    ) -> None:
        self.scratch_root = scratch_root
        self.log_bytes = log_bytes
        self.volumes = volumes
        self.warm = warm
        self._adopted: dict[str, Path] = {}
        """Assignments whose outputs stay in a retired warm sandbox's workspace, until cleanup."""
        scratch_root.mkdir(parents=True, exist_ok=True)
        mark = scratch_root / self.MARK
        if mark.is_file():
            left = (
                volumes.sweep(scratch_root, keep=self.MARK)
                if volumes
                else remove_entries(scratch_root, self.MARK)
            )
            if left:
                log.info("removed %d workspaces left by an earlier run of this node", len(left))
        elif not any(scratch_root.iterdir()):
            mark.touch()

    def workdir(self, assignment_id: str) -> Path:
        """The scratch directory of one assignment."""
        return self.scratch_root / assignment_id

    def _fresh(self, assignment_id: str, limits: SandboxLimits) -> Path:
        """An empty workspace for the assignment (a volume of its scratch cap where there are volumes)."""
        self.cleanup(assignment_id)
        workdir = self.workdir(assignment_id)
        make_workspace(workdir, self.volumes, limits.scratch_bytes)
        return workdir

    async def _place(
        self, sandbox: Sandbox, assignment_id: str, request: SandboxRequest
    ) -> tuple[WarmSandbox | None, SandboxRequest]:
        """Where the run goes: a warm sandbox and its workspace (bwrap, where the node keeps them),
        or none and a fresh workspace of the assignment's own; the request pointed at it."""
        lease = None
        if self.warm is not None and sandbox.name == "bwrap":
            lease = await self.warm.acquire(request)
        if lease is not None:
            return lease, replace(request, workdir=lease.workdir)
        workdir = await asyncio.to_thread(self._fresh, assignment_id, request.limits)
        return None, replace(request, workdir=workdir)

    def _take_outputs(
        self, assignment_id: str, lease: WarmSandbox, outputs: list[CollectedOutput]
    ) -> tuple[list[CollectedOutput], bool]:
        """Outputs moved out of a warm sandbox's workspace; whether the sandbox can be reused.

        Small ones are copied to the assignment's own directory; large ones stay where
        they are, and the sandbox's workspace becomes the assignment's until cleanup.
        """
        if not outputs:
            return outputs, True
        if sum(o.size for o in outputs) > COPY_OUT_BYTES:
            self._adopted[assignment_id] = lease.workdir
            return outputs, False
        self.cleanup(assignment_id)
        target = self.workdir(assignment_id)
        target.mkdir(mode=0o700, parents=True)
        moved = []
        for out in outputs:
            local = target.joinpath(*out.path.split("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out.local, local, follow_symlinks=False)
            moved.append(CollectedOutput(out.path, local, out.sha256, out.size))
        return moved, True

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
        limits = SandboxLimits(wall_s=float(manifest.timeout_s), log_bytes=self.log_bytes)
        workdir = self.workdir(assignment_id)
        request = SandboxRequest(manifest.command(), workdir, env=dict(manifest.env), limits=limits)
        lease, request = await self._place(sandbox, assignment_id, request)
        workdir = request.workdir
        reuse = False
        try:
            if lease is not None:
                await asyncio.to_thread(_unpack_and_grant, workspace, lease)
            elif workspace:
                await asyncio.to_thread(unpack_workspace, workspace, workdir)
            unpacked = time.monotonic()
            outcome = await (lease.run(request, granted=True) if lease else sandbox.run(request))
            ran = time.monotonic()
            outputs, problem = await asyncio.to_thread(
                collect_outputs, workdir, manifest.outputs, max_output_bytes
            )
            if lease is not None and outputs:
                outputs, reuse = await asyncio.to_thread(self._take_outputs, assignment_id, lease, outputs)
            elif lease is not None:
                reuse = True
        finally:
            if lease is not None and self.warm is not None:
                self.warm.release(lease, reuse=reuse, keep_workdir=assignment_id in self._adopted)
        log.debug(
            "%s: workspace %.1f ms, sandbox %.1f ms, outputs %.1f ms",
            assignment_id,
            (unpacked - started) * 1000,
            (ran - unpacked) * 1000,
            (time.monotonic() - ran) * 1000,
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
        limits = SandboxLimits(wall_s=float(gen.timeout_s), log_bytes=self.log_bytes)
        request = SandboxRequest(["/bin/sh", "-c", gen.verifier], self.workdir(assignment_id), limits=limits)
        generation = await engine.generate(
            GenerationRequest(prompt=gen.prompt, max_tokens=gen.max_tokens, temperature=gen.temperature)
        )
        text = extract_output(generation.text, gen.extract)
        data = text.encode()
        if len(data) > max_output_bytes:
            return TaskResult(
                exit_code=-1, error=f"output is {len(data)} bytes; the limit is {max_output_bytes}"
            ), []
        lease, request = await self._place(sandbox, assignment_id, request)
        workdir = request.workdir
        keep = self.scratch_root / f"{assignment_id}.output"  # after _fresh, which clears it
        keep.write_bytes(data)  # the verifier may change the file; upload what the model wrote
        try:
            if workspace:
                await asyncio.to_thread(unpack_workspace, workspace, workdir)
            target = workdir / gen.output_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            outcome = await (lease or sandbox).run(request)
        finally:
            if lease is not None and self.warm is not None:
                self.warm.release(lease, reuse=True)
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
        """Remove an assignment's scratch directory (and its volume)."""
        adopted = self._adopted.pop(assignment_id, None)
        if adopted is not None:
            remove_workspace(adopted, self.volumes)
        remove_workspace(self.workdir(assignment_id), self.volumes)
        (self.scratch_root / f"{assignment_id}.output").unlink(missing_ok=True)
