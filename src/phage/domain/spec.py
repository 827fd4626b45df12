"""A task's spec: what it runs, where it may run, and how many agreeing copies it needs.

Typed and frozen, so every reader sees fields rather than string keys. It meets a dict only at
the store's edge (``to_dict``/``from_dict``, stored as JSON) and protobuf only at the protocol's
edge (``protocol/convert.py``). Stored specs were validated when submitted, so reading them back
does not validate again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phage.domain.generate import GenerateSpec
from phage.domain.manifest import JobManifest


@dataclass(frozen=True, slots=True)
class QuorumSpec:
    """A job's quorum: agreeing results that validate it, and copies dispatched at once."""

    min_quorum: int = 1
    target_results: int = 1

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return {"min_quorum": self.min_quorum, "target_results": self.target_results}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuorumSpec:
        """From the stored form."""
        return cls(int(data.get("min_quorum", 1)), int(data.get("target_results", 1)))


def manifest_from_dict(data: dict[str, Any]) -> JobManifest:
    """A stored (already validated) manifest."""
    return JobManifest(
        entrypoint=str(data["entrypoint"]),
        interpreter=str(data.get("interpreter", "python3")),
        args=tuple(data.get("args", ())),
        env=dict(data.get("env", {})),
        outputs=tuple(data.get("outputs", ())),
        timeout_s=int(data.get("timeout_s", 300)),
    )


def generate_from_dict(data: dict[str, Any]) -> GenerateSpec:
    """A stored (already validated) generate spec."""
    known = set(GenerateSpec.__dataclass_fields__)
    return GenerateSpec(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a task runs: a job's manifest or a generate request, its workspace and isolation."""

    isolation: str = "any"
    """The sandbox strength it needs (``any`` or a backend name)."""
    manifest: JobManifest | None = None
    generate: GenerateSpec | None = None
    quorum: QuorumSpec | None = None
    """Jobs in a pool that checks results by agreement."""
    workspace: str = ""
    """SHA-256 of the workspace archive in the blob store; empty: none."""
    workspace_size: int = 0
    request_id: str = ""
    """The HTTP request that submitted the task: carried to the node's logs (never attested)."""

    @property
    def model(self) -> str | None:
        """The model a generate task needs; None for other kinds."""
        return self.generate.model if self.generate is not None else None

    @property
    def best_of(self) -> int:
        """Attempts a best-of-N generate task makes (each on its own node); 1 otherwise."""
        return self.generate.n if self.generate is not None else 1

    def to_dict(self) -> dict[str, Any]:
        """The stored (JSON) form; keys appear only when set."""
        out: dict[str, Any] = {"isolation": self.isolation}
        if self.manifest is not None:
            out["manifest"] = self.manifest.to_dict()
        if self.generate is not None:
            out["generate"] = self.generate.to_dict()
            out["replicas"] = self.generate.n
        if self.quorum is not None:
            out["quorum"] = self.quorum.to_dict()
        if self.workspace:
            out["workspace"] = self.workspace
            out["workspace_size"] = self.workspace_size
        if self.request_id:
            out["request_id"] = self.request_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """From the stored form."""
        manifest, generate, quorum = data.get("manifest"), data.get("generate"), data.get("quorum")
        return cls(
            isolation=str(data.get("isolation", "any")),
            manifest=manifest_from_dict(manifest) if manifest else None,
            generate=generate_from_dict(generate) if generate else None,
            quorum=QuorumSpec.from_dict(quorum) if quorum else None,
            workspace=str(data.get("workspace") or ""),
            workspace_size=int(data.get("workspace_size") or 0),
            request_id=str(data.get("request_id") or ""),
        )
