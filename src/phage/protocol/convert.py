"""Wire <-> domain conversion: the only module that knows both the protobufs and the domain."""

from __future__ import annotations

from typing import Any

from phage.domain import Dispatch, JobManifest, OutputFile, ReceivedAssignment, TaskResult, TaskSpec
from phage.domain.blocks import BlockAssignment, BlockOffer, BlockRange
from phage.domain.spec import generate_from_dict
from phage.errors import InvalidInput
from phage.pki.attestation import input_hash
from phage.protocol.v1 import blocks_pb2 as blocks_pb
from phage.protocol.v1 import phage_pb2 as pb


def gpu_to_dict(g: pb.GpuInfo) -> dict[str, Any]:
    """One GPU's figures."""
    return {
        "index": g.index,
        "model": g.model,
        "vram_total_bytes": g.vram_total_bytes,
        "vram_used_bytes": g.vram_used_bytes,
        "utilization": round(g.utilization, 4),
        "temperature_c": round(g.temperature_c, 1),
    }


def gpu_from_dict(d: dict[str, Any]) -> pb.GpuInfo:
    """Inverse of :func:`gpu_to_dict`."""
    return pb.GpuInfo(
        index=int(d.get("index", 0)),
        model=str(d.get("model", "")),
        vram_total_bytes=int(d.get("vram_total_bytes", 0)),
        vram_used_bytes=int(d.get("vram_used_bytes", 0)),
        utilization=float(d.get("utilization", 0.0)),
        temperature_c=float(d.get("temperature_c", 0.0)),
    )


def node_info_to_dict(info: pb.NodeInfo) -> dict[str, Any]:
    """Registration info as stored (``nodes.hardware``)."""
    return {
        "name": info.name,
        "hostname": info.hostname,
        "gpus": [gpu_to_dict(g) for g in info.gpus],
        "driver_version": info.driver_version,
        "cuda_version": info.cuda_version,
        "cpu_count": info.cpu_count,
        "memory_total_bytes": info.memory_total_bytes,
        "sandboxes": list(info.sandboxes),
        "engines": list(info.engines),
        "loaded_model": info.loaded_model,
        "max_concurrency": info.max_concurrency,
        "phage_version": info.phage_version,
        "models": list(info.models),
        "model_memory_bytes": info.model_memory_bytes,
        "can_load_models": info.can_load_models,
    }


def node_info_from_dict(d: dict[str, Any]) -> pb.NodeInfo:
    """Build the wire form from a hardware probe's dict."""
    return pb.NodeInfo(
        name=str(d.get("name", "")),
        hostname=str(d.get("hostname", "")),
        gpus=[gpu_from_dict(g) for g in d.get("gpus", [])],
        driver_version=str(d.get("driver_version", "")),
        cuda_version=str(d.get("cuda_version", "")),
        cpu_count=int(d.get("cpu_count", 0)),
        memory_total_bytes=int(d.get("memory_total_bytes", 0)),
        sandboxes=list(d.get("sandboxes", [])),
        engines=list(d.get("engines", [])),
        loaded_model=str(d.get("loaded_model", "")),
        max_concurrency=int(d.get("max_concurrency", 0)),
        phage_version=str(d.get("phage_version", "")),
        models=[str(m) for m in d.get("models", [])],
        model_memory_bytes=int(d.get("model_memory_bytes", 0)),
        can_load_models=bool(d.get("can_load_models", False)),
    )


def metrics_to_dict(m: pb.NodeMetrics) -> dict[str, Any]:
    """Heartbeat metrics as a dict."""
    return {
        "gpus": [gpu_to_dict(g) for g in m.gpus],
        "active_tasks": m.active_tasks,
        "loaded_model": m.loaded_model,
        "cpu_percent": round(m.cpu_percent, 1),
        "memory_used_bytes": m.memory_used_bytes,
        "models": list(m.models),
        "model_memory_bytes": m.model_memory_bytes,
        "loaded_model_bytes": m.loaded_model_bytes,
    }


def metrics_from_dict(d: dict[str, Any]) -> pb.NodeMetrics:
    """Inverse of :func:`metrics_to_dict`."""
    return pb.NodeMetrics(
        gpus=[gpu_from_dict(g) for g in d.get("gpus", [])],
        active_tasks=int(d.get("active_tasks", 0)),
        loaded_model=str(d.get("loaded_model", "")),
        cpu_percent=float(d.get("cpu_percent", 0.0)),
        memory_used_bytes=int(d.get("memory_used_bytes", 0)),
        models=[str(m) for m in d.get("models", [])],
        model_memory_bytes=int(d.get("model_memory_bytes", 0)),
        loaded_model_bytes=int(d.get("loaded_model_bytes", 0)),
    )


def manifest_to_pb(m: dict[str, Any]) -> pb.JobManifest:
    """A stored manifest dict on the wire."""
    return pb.JobManifest(
        entrypoint=m.get("entrypoint", ""),
        interpreter=m.get("interpreter", ""),
        args=list(m.get("args", [])),
        env=dict(m.get("env", {})),
        outputs=list(m.get("outputs", [])),
        timeout_s=int(m.get("timeout_s", 0)),
    )


def manifest_from_pb(m: pb.JobManifest) -> dict[str, Any]:
    """A wire manifest as a dict for :meth:`JobManifest.parse`."""
    return {
        "entrypoint": m.entrypoint,
        "interpreter": m.interpreter,
        "args": list(m.args),
        "env": dict(m.env),
        "outputs": list(m.outputs),
        "timeout_s": m.timeout_s,
    }


def generate_to_pb(g: dict[str, Any]) -> pb.GenerateSpec:
    """A stored generate spec on the wire."""
    return pb.GenerateSpec(
        prompt=g["prompt"],
        model=g["model"],
        verifier=g["verifier"],
        max_tokens=int(g["max_tokens"]),
        temperature=float(g["temperature"]),
        output_path=g["output_path"],
        extract=g["extract"],
        timeout_s=int(g["timeout_s"]),
    )


def generate_from_pb(g: pb.GenerateSpec) -> dict[str, Any]:
    """A wire generate spec as a dict."""
    return {
        "prompt": g.prompt,
        "model": g.model,
        "verifier": g.verifier,
        "max_tokens": g.max_tokens,
        "temperature": round(g.temperature, 4),
        "output_path": g.output_path,
        "extract": g.extract,
        "timeout_s": g.timeout_s,
    }


def assignment_input_sha256(msg: pb.TaskAssignment) -> str:
    """The input hash a node computes from the assignment it received (see pki.attestation)."""
    return input_hash(
        task_id=msg.task_id,
        kind=msg.kind,
        manifest=manifest_from_pb(msg.manifest) if msg.HasField("manifest") else None,
        generate=generate_from_pb(msg.generate) if msg.HasField("generate") else None,
        workspace_sha256=msg.workspace_sha256,
        isolation=msg.isolation,
    )


def assignment_from_pb(msg: pb.TaskAssignment) -> ReceivedAssignment:
    """The node's edge: an assignment from the wire as domain types (its manifest validated again)."""
    problem = ""
    manifest = None
    if msg.HasField("manifest"):
        try:
            manifest = JobManifest.parse(manifest_from_pb(msg.manifest))
        except InvalidInput as exc:
            problem = exc.message
    generate = generate_from_dict(generate_from_pb(msg.generate)) if msg.HasField("generate") else None
    spec = TaskSpec(
        isolation=msg.isolation,
        manifest=manifest,
        generate=generate,
        workspace=msg.workspace_sha256,
        workspace_size=msg.workspace_size,
        request_id=msg.request_id,
    )
    return ReceivedAssignment(
        assignment_id=msg.assignment_id,
        task_id=msg.task_id,
        kind=msg.kind,
        spec=spec,
        input_sha256=assignment_input_sha256(msg),
        workspace=msg.workspace or None,
        max_output_bytes=msg.max_output_bytes,
        problem=problem,
    )


def dispatch_to_pb(d: Dispatch, max_output_bytes: int) -> pb.TaskAssignment:
    """An assignment on the wire (its input hash is in ``d.input_sha256``)."""
    a = d.assignment
    msg = _assignment_body(d)
    msg.assignment_id = a.attempt_id
    msg.lease_expires_unix_ms = int(a.lease_expires_at * 1000)
    msg.max_output_bytes = max_output_bytes
    msg.input_sha256 = d.input_sha256
    msg.request_id = a.spec.request_id  # metadata for logs, outside what the input hash covers
    if d.workspace is not None:
        msg.workspace = d.workspace
    return msg


def _assignment_body(d: Dispatch) -> pb.TaskAssignment:
    """The parts of an assignment that describe the task (what the input hash covers)."""
    a = d.assignment
    msg = pb.TaskAssignment(
        task_id=a.task_id,
        kind=a.kind.value,
        workspace_sha256=d.workspace_sha256,
        workspace_size=d.workspace_size,
        isolation=a.spec.isolation,
    )
    if a.spec.manifest is not None:
        msg.manifest.CopyFrom(manifest_to_pb(a.spec.manifest.to_dict()))
    if a.spec.generate is not None:
        msg.generate.CopyFrom(generate_to_pb(a.spec.generate.to_dict()))
    return msg


def result_from_pb(r: pb.TaskResult) -> TaskResult:
    """A node's report as a domain result."""
    return TaskResult(
        exit_code=r.exit_code,
        outputs=[OutputFile(o.path, o.sha256, o.size) for o in r.outputs],
        stdout_tail=r.stdout_tail[-8192:],
        stderr_tail=r.stderr_tail[-8192:],
        error=r.error[:2000],
        wall_time_s=r.wall_time_ms / 1000,
        passed=r.passed if r.has_verdict else None,
        output_text=r.output_text,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        engine=r.engine,
        model=r.model,
        sandbox=r.sandbox,
        sandbox_sha256=r.sandbox_sha256,
        input_sha256=r.input_sha256,
        output_sha256=r.output_sha256,
        attestation=r.attestation.hex(),
        task_id=r.task_id,
    )


def result_to_pb(node_id: str, assignment_id: str, task_id: str, r: TaskResult) -> pb.TaskResult:
    """A domain result on the wire."""
    return pb.TaskResult(
        node_id=node_id,
        assignment_id=assignment_id,
        task_id=task_id,
        exit_code=r.exit_code,
        error=r.error,
        stdout_tail=r.stdout_tail,
        stderr_tail=r.stderr_tail,
        outputs=[pb.OutputFile(path=o.path, sha256=o.sha256, size=o.size) for o in r.outputs],
        wall_time_ms=int(r.wall_time_s * 1000),
        sandbox=r.sandbox,
        has_verdict=r.passed is not None,
        passed=bool(r.passed),
        output_text=r.output_text,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        engine=r.engine,
        model=r.model,
        sandbox_sha256=r.sandbox_sha256,
        input_sha256=r.input_sha256,
        output_sha256=r.output_sha256,
        attestation=bytes.fromhex(r.attestation),
    )


def block_offer_from_pb(msg: blocks_pb.BlockOffer) -> BlockOffer:
    """A heartbeat's block offer as a domain value."""
    return BlockOffer(
        serve_blocks=msg.serve_blocks,
        dataplane_address=msg.dataplane_address,
        memory_bytes=int(msg.memory_bytes),
        model=msg.model,
        start=int(msg.start),
        end=int(msg.end),
        throughput=float(msg.throughput),
        requested_model=msg.requested_model,
        active_sessions=int(msg.active_sessions),
    )


def block_offer_to_pb(offer: BlockOffer) -> blocks_pb.BlockOffer:
    """A node's block offer for its heartbeat."""
    return blocks_pb.BlockOffer(
        serve_blocks=offer.serve_blocks,
        dataplane_address=offer.dataplane_address,
        memory_bytes=offer.memory_bytes,
        model=offer.model,
        start=offer.start,
        end=offer.end,
        throughput=offer.throughput,
        requested_model=offer.requested_model,
        active_sessions=offer.active_sessions,
    )


def block_assignment_to_pb(a: BlockAssignment) -> blocks_pb.BlockAssignment:
    """The range a node should hold, for its heartbeat response."""
    blocks = a.blocks or BlockRange(0, 1)
    return blocks_pb.BlockAssignment(
        model=a.model,
        checkpoint=a.checkpoint,
        start=blocks.start if a.blocks else 0,
        end=blocks.end if a.blocks else 0,
        standby=a.standby,
        error=a.error,
    )


def block_assignment_from_pb(msg: blocks_pb.BlockAssignment) -> BlockAssignment:
    """A heartbeat response's block assignment as a domain value."""
    blocks = BlockRange(msg.start, msg.end) if msg.model and msg.end > msg.start >= 0 else None
    return BlockAssignment(msg.model, msg.checkpoint, blocks, msg.standby, msg.error)
