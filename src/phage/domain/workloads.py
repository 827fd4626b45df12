"""What a workload is, for pools that run approved workloads only: a digest of the code that runs.

A job's workload is its workspace (the archive's SHA-256, inline files included: they are packed
deterministically) with its entrypoint and interpreter; a generate task's is its verifier command
with its workspace. Arguments, environment, prompts and limits are inputs to an approved workload,
not part of it, so one approval covers every run of the same code. No-op tasks and chat run no
code of the submitter's and have no workload.
"""

from __future__ import annotations

import hashlib
import json
import re

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def workload_digest(
    kind: str,
    *,
    workspace_sha256: str | None,
    entrypoint: str | None = None,
    interpreter: str | None = None,
    verifier: str | None = None,
) -> str | None:
    """``sha256:<hex>`` of the canonical description of the code a task runs (None: it runs none)."""
    if kind == "job":
        body = {
            "kind": "job",
            "workspace": workspace_sha256 or "",
            "entrypoint": entrypoint,
            "interpreter": interpreter,
        }
    elif kind == "generate":
        body = {"kind": "generate", "workspace": workspace_sha256 or "", "verifier": verifier}
    else:
        return None
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def is_digest(text: str) -> bool:
    """True for ``sha256:`` and 64 lowercase hex digits."""
    return _DIGEST.fullmatch(text) is not None
