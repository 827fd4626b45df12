"""Facts of a VNode checkpoint read without torch: its safetensors header.

The coordinator needs the last batch a checkpoint applied to tell a restarted
producer where to start passing activations on again; it must not import torch
(seconds of CPU) for eight bytes and a JSON header.
"""

from __future__ import annotations

import json


def checkpoint_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (header is 8 bytes of length, then JSON)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def checkpoint_last_batch(blob: bytes) -> int:
    """The number of the last batch a checkpoint applied (-1: none, or unreadable)."""
    try:
        return int(checkpoint_metadata(blob).get("last_batch", "-1"))
    except (ValueError, UnicodeDecodeError):
        return -1
