"""How much memory a model needs: a table of known models, then a guess from its name.

Placement must not send a model to a node it cannot fit. Before any node has
loaded a model, the coordinator only has its name: known models come from the
table (published figures, weights plus a working margin for the KV cache);
other names are sized from their parameter count ("7B", "0.5B", "8x7B") at two
bytes a parameter (half that for 4-bit AWQ/GPTQ/GGUF-Q4 names) plus 20 %. Once
a node has the model loaded it reports the measured figure, which wins.
"""

from __future__ import annotations

import re

GB = 1_000_000_000

KNOWN: dict[str, int] = {
    "qwen2.5-coder-7b": 14 * GB,
    "qwen2.5-coder-7b-instruct": 14 * GB,
    "deepseek-coder-v2-lite": 32 * GB,
    "deepseek-coder-v2-lite-instruct": 32 * GB,
    "qwen2.5-72b-awq": 40 * GB,
    "qwen2.5-72b-instruct-awq": 40 * GB,
    "qwen2.5-0.5b-instruct": 1_500_000_000,
    "qwen2.5-1.5b-instruct": 3_500_000_000,
    "qwen2.5-7b-instruct": 15 * GB,
    "llama-3.1-8b-instruct": 16 * GB,
    "meta-llama-3.1-8b-instruct": 16 * GB,
    "mistral-7b-instruct-v0.3": 15 * GB,
    "llama-3.1-70b-instruct": 141 * GB,
    "llama-3.1-405b-instruct": 810 * GB,
}

_PARAMS = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)
_FOUR_BIT = re.compile(r"awq|gptq|int4|4bit|q4|bnb-4", re.IGNORECASE)


def _key(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")


def estimate_bytes(model: str, measured: dict[str, int] | None = None) -> int | None:
    """Memory ``model`` needs: measured by a node, else the table, else from its name; None if unknown."""
    if measured and measured.get(model):
        return measured[model]
    key = _key(model)
    if key in KNOWN:
        return KNOWN[key]
    m = _PARAMS.search(key)
    if m is None:
        return None
    experts = int(m.group(1) or 1)
    params = float(m.group(2)) * (1e9 if m.group(3).lower() == "b" else 1e6) * experts
    per_param = 0.5 if _FOUR_BIT.search(key) else 2.0
    return int(params * per_param * 1.2)


def describe(n: int | None) -> str:
    """Bytes as a person reads them (``14.0 GB``)."""
    if n is None:
        return "unknown"
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1e6:.0f} MB"
