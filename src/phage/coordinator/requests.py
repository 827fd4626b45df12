"""Turning a user's task request (JSON, or multipart with a workspace) into tasks.

Every check names the field and the limit; nothing is written until the whole
request has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phage.domain import JobManifest, TaskKind
from phage.domain.generate import GenerateSpec
from phage.domain.workspace import tarball_from_files, validate_tarball
from phage.errors import InvalidInput, PayloadTooLarge

ISOLATION_CHOICES = ("any", "none", "bwrap", "gvisor")
MAX_LABELS = 32
_KNOWN = {"kind", "manifest", "files", "priority", "max_attempts", "labels", "isolation", "count"}
_QUORUM = {"min_quorum", "target_results"}
MAX_QUORUM = 16
_GENERATE = {
    "prompt",
    "model",
    "verifier",
    "n",
    "max_tokens",
    "temperature",
    "output_path",
    "extract",
    "distinct",
    "timeout_s",
    "wait_for_model",
    "check_every_stage",
}


@dataclass(slots=True)
class TaskRequest:
    """A validated request for one task (``count`` copies)."""

    kind: TaskKind
    manifest: JobManifest | None = None
    generate: GenerateSpec | None = None
    wait_for_model: bool = False
    workspace: bytes | None = None
    priority: int = 0
    max_attempts: int = 3
    labels: dict[str, str] = field(default_factory=dict)
    isolation: str = "any"
    count: int = 1
    min_quorum: int | None = None
    """Jobs: agreeing results that validate an untrusted result; None: the coordinator's default."""
    target_results: int | None = None
    """Jobs: copies dispatched at once when first queued; None: the coordinator's default."""


def _int_field(data: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer", field=name)
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}", field=name)
    return value


def parse_task_request(
    data: Any,
    *,
    workspace: bytes | None = None,
    max_workspace_bytes: int,
    default_max_attempts: int,
    max_count: int = 10_000,
) -> TaskRequest:
    """Validate one task request; ``workspace`` is an uploaded archive, if any."""
    if not isinstance(data, dict):
        raise InvalidInput("a task must be a JSON object", field="task")
    allowed = (_KNOWN | _GENERATE if data.get("kind") == "generate" else _KNOWN) | _QUORUM
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(unknown)}", field=unknown[0])
    raw_kind = data.get("kind", "job")
    if not isinstance(raw_kind, str):
        raise InvalidInput("kind must be a string", field="kind")
    try:
        kind = TaskKind(raw_kind)
    except ValueError:
        choices = ", ".join(k.value for k in TaskKind)
        raise InvalidInput(
            f"unknown task kind {raw_kind!r}; expected one of: {choices}", field="kind"
        ) from None

    labels = data.get("labels", {})
    if (
        not isinstance(labels, dict)
        or len(labels) > MAX_LABELS
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
            for k, v in labels.items()
        )
    ):
        raise InvalidInput(
            f"labels must be an object of at most {MAX_LABELS} strings (keys ≤ 64, values ≤ 256 characters)",
            field="labels",
        )
    isolation = data.get("isolation", "any")
    if isolation not in ISOLATION_CHOICES:
        raise InvalidInput(f"isolation must be one of: {', '.join(ISOLATION_CHOICES)}", field="isolation")

    req = TaskRequest(
        kind=kind,
        priority=_int_field(data, "priority", 0, -1000, 1000),
        max_attempts=_int_field(data, "max_attempts", default_max_attempts, 1, 100),
        labels=dict(labels),
        isolation=isolation,
        count=_int_field(data, "count", 1, 1, max_count),
    )
    for name in sorted(_QUORUM & set(data)):
        if kind is not TaskKind.JOB:
            raise InvalidInput(
                f"{name} applies to jobs only (a generate result is re-verified, not replicated)", field=name
            )
        setattr(req, name, _int_field(data, name, 1, 1, MAX_QUORUM))
    if kind is TaskKind.NOOP:
        if "manifest" in data or "files" in data or workspace is not None:
            raise InvalidInput("a noop task takes no manifest, files or workspace", field="kind")
        return req

    if kind is TaskKind.GENERATE:
        if "manifest" in data:
            raise InvalidInput(
                "a generate task takes no manifest (it has prompt, model, verifier)", field="manifest"
            )
        req.generate = GenerateSpec.parse(data)
        wait = data.get("wait_for_model", False)
        if not isinstance(wait, bool):
            raise InvalidInput("wait_for_model must be true or false", field="wait_for_model")
        req.wait_for_model = wait
    else:
        if "manifest" not in data:
            raise InvalidInput("manifest is required for a job", field="manifest")
        req.manifest = JobManifest.parse(data["manifest"])
    files = data.get("files")
    if files is not None and workspace is not None:
        raise InvalidInput("give either inline files or a workspace archive, not both", field="files")
    if workspace is not None:
        if len(workspace) > max_workspace_bytes:
            raise PayloadTooLarge(
                f"workspace archive is {len(workspace)} bytes; the limit is {max_workspace_bytes}",
                field="workspace",
            )
        validate_tarball(workspace, max_unpacked=max_workspace_bytes)
        req.workspace = workspace
    elif files is not None:
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise InvalidInput("files must be an object of file name → text content", field="files")
        req.workspace = tarball_from_files(files, max_unpacked=max_workspace_bytes)
    return req
