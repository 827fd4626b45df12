"""Wire <-> domain conversion: the only module that knows both the protobufs and the domain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from phage.domain import OutputFile, TaskResult
from phage.protocol.v1 import phage_pb2 as pb

if TYPE_CHECKING:
    from phage.coordinator.core import Dispatch


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
    )


def metrics_to_dict(m: pb.NodeMetrics) -> dict[str, Any]:
    """Heartbeat metrics as a dict."""
    return {
        "gpus": [gpu_to_dict(g) for g in m.gpus],
        "active_tasks": m.active_tasks,
        "loaded_model": m.loaded_model,
        "cpu_percent": round(m.cpu_percent, 1),
        "memory_used_bytes": m.memory_used_bytes,
    }


def metrics_from_dict(d: dict[str, Any]) -> pb.NodeMetrics:
    """Inverse of :func:`metrics_to_dict`."""
    return pb.NodeMetrics(
        gpus=[gpu_from_dict(g) for g in d.get("gpus", [])],
        active_tasks=int(d.get("active_tasks", 0)),
        loaded_model=str(d.get("loaded_model", "")),
        cpu_percent=float(d.get("cpu_percent", 0.0)),
        memory_used_bytes=int(d.get("memory_used_bytes", 0)),
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


def dispatch_to_pb(d: Dispatch, max_output_bytes: int) -> pb.TaskAssignment:
    """An assignment on the wire."""
    a = d.assignment
    msg = pb.TaskAssignment(
        assignment_id=a.attempt_id,
        task_id=a.task_id,
        kind=a.kind.value,
        workspace_sha256=d.workspace_sha256,
        workspace_size=d.workspace_size,
        lease_expires_unix_ms=int(a.lease_expires_at * 1000),
        max_output_bytes=max_output_bytes,
        isolation=str(a.spec.get("isolation", "any")),
    )
    if "manifest" in a.spec:
        msg.manifest.CopyFrom(manifest_to_pb(a.spec["manifest"]))
    if d.workspace is not None:
        msg.workspace = d.workspace
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
    )


def result_to_pb(
    node_id: str, assignment_id: str, task_id: str, r: TaskResult, sandbox: str
) -> pb.TaskResult:
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
        sandbox=sandbox,
    )
