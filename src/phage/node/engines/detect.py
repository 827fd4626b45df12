"""Which engine a node should run when the operator says ``--engine auto``."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

from phage.errors import InvalidInput


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect_engine(model: str = "", *, hardware: dict[str, Any] | None = None) -> str:
    """The best engine this machine can run for ``model``.

    llama.cpp for a ``.gguf`` file when ``llama-server`` is on PATH (vLLM's GGUF
    support is experimental; llama.cpp's is native, on CPU too); else vLLM where
    there is an NVIDIA GPU and vLLM is installed (by far the fastest there); else
    the in-process transformers engine.
    ``hardware`` is :func:`phage.node.probe.probe_hardware`'s answer (probed when None).
    """
    if hardware is None:
        from phage.node.probe import probe_hardware

        hardware = probe_hardware()
    if model.lower().endswith(".gguf") and shutil.which("llama-server"):
        return "llamacpp"
    if hardware.get("gpus") and (shutil.which("vllm") or _has_module("vllm")):
        return "vllm"
    if _has_module("transformers") and _has_module("torch"):
        return "transformers"
    raise InvalidInput(
        "no inference engine found: install vllm (NVIDIA GPU), llama.cpp's llama-server (GGUF models)"
        " or pip install 'phage[transformers]', or point --engine openai --engine-url at a server",
        field="engine",
    )
