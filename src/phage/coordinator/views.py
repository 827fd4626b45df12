"""JSON shapes the HTTP API returns (the ``XPublic`` side of each domain type)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from phage.coordinator.admission import admission_state
from phage.coordinator.pool import LiveNode
from phage.domain import Attempt, Task
from phage.domain.quorum import reputation_view


def task_public(task: Task, attempts: list[Attempt] | None = None) -> dict[str, Any]:
    """A task as clients see it."""
    spec = task.spec
    out: dict[str, Any] = {
        "id": task.id,
        "kind": task.kind.value,
        "state": task.state.value,
        "priority": task.priority,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "finished_at": task.finished_at,
        "attempts_made": task.attempts_made,
        "max_attempts": task.max_attempts,
        "error": task.error,
        "labels": task.labels,
        "isolation": spec.isolation,
        "manifest": spec.manifest.to_dict() if spec.manifest is not None else None,
        "workspace_sha256": spec.workspace or None,
        "generate": spec.generate.to_dict() if spec.generate is not None else None,
        "replicas": task.replicas,
        "quorum": spec.quorum.to_dict() if spec.quorum is not None else None,
        "result": None,
    }
    if task.result is not None:
        result = task.result.to_dict()
        for o in result["outputs"]:
            o["url"] = f"/api/tasks/{task.id}/outputs/{quote(o['path'])}"
        out["result"] = result
    if attempts is not None:
        out["attempts"] = [attempt_public(a) for a in attempts]
    return out


def attempt_public(a: Attempt) -> dict[str, Any]:
    """One attempt, with what its node reported."""
    r = a.result
    return {
        "id": a.id,
        "node_id": a.node_id,
        "state": a.state.value,
        "dispatched_at": a.dispatched_at,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "exit_code": a.exit_code,
        "error": a.error,
        "passed": r.passed if r else None,
        "completion_tokens": r.completion_tokens if r else None,
        "output_text": r.output_text if r else None,
        "verifier_log": (r.stdout_tail + r.stderr_tail)[-2000:] if r else None,
        "attested": bool(r.attestation) if r else None,
        "output_sha256": r.output_sha256 if r else None,
    }


def node_public(live: LiveNode) -> dict[str, Any]:
    """A node with its live figures."""
    n = live.node
    hw = n.hardware
    gpus = live.gpus
    vram_total, vram_used = live.vram_bytes()
    return {
        "id": n.id,
        "name": n.name,
        "state": n.state.value,
        "registered_at": n.registered_at,
        "last_heartbeat": live.last_seen or n.last_heartbeat,
        "heartbeat_age_s": round(time.time() - (live.last_seen or n.last_heartbeat), 3),
        "max_concurrency": n.max_concurrency,
        "active_tasks": len(live.attempts),
        "sandboxes": n.sandboxes,
        "loaded_model": n.loaded_model,
        "version": n.version,
        "hostname": hw.get("hostname", ""),
        "cpu_count": hw.get("cpu_count", 0),
        "memory_total_bytes": hw.get("memory_total_bytes", 0),
        "gpus": gpus,
        "vram_total_bytes": vram_total,
        "vram_used_bytes": vram_used,
        "cpu_percent": live.metrics.get("cpu_percent"),
        "engines": hw.get("engines", []),
        "models": live.metrics.get("models") or hw.get("models", []),
        "model_memory_bytes": live.metrics.get("model_memory_bytes") or hw.get("model_memory_bytes", 0),
        "loaded_model_bytes": live.metrics.get("loaded_model_bytes", 0),
        "driver_version": hw.get("driver_version", ""),
        "cuda_version": hw.get("cuda_version", ""),
        "trusted": n.trusted,
        "quarantined": n.quarantined,
        "quarantine_reason": n.quarantine_reason,
        "reputation": reputation_view(n.reputation),
        "admission": admission_state(n),
        "draining": n.draining,
        "max_concurrent_jobs": min(n.max_concurrency, n.max_jobs or n.max_concurrency),
        "concurrency_cap": n.max_jobs,
    }
