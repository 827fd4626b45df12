"""Choosing and building a node's engine from its command line.

Kept apart from ``base.py`` so the engine interface does not import the engines that implement
it; each engine module is imported only when chosen (most pull in heavy optional libraries).
"""

from __future__ import annotations

from typing import Any

from phage.errors import InvalidInput
from phage.node.engines.base import Engine

ENGINE_KINDS = ("transformers", "vllm", "llamacpp", "openai")


def make_engine(kind: str, model: str, *, model_name: str | None = None, **options: object) -> Engine:
    """An engine by kind, serving ``model`` (a path, GGUF file or hub id; for ``openai`` the model id).

    ``options`` are engine settings from the node's command line (``url``, ``port``,
    ``gpu_memory_utilization``, ``max_model_len``, ``command``…); each engine
    takes the ones it knows, and None means "the engine's default".
    ``kind="auto"`` picks with :func:`phage.node.engines.detect.detect_engine`.
    """
    given = {k: v for k, v in options.items() if v is not None}

    def take(*names: str) -> dict[str, Any]:
        return {n: given[n] for n in names if n in given}

    if kind == "auto":
        from phage.node.engines.detect import detect_engine

        kind = detect_engine(model)
    if kind == "transformers":
        from phage.node.engines.transformers import TransformersEngine

        return TransformersEngine(model, name=model_name)
    managed = ("port", "command", "log_dir", "env", "startup_timeout_s", "stop_grace_s", "restart_backoff_s")
    if kind == "vllm":
        from phage.node.engines.vllm import VLLMEngine

        return VLLMEngine(
            model, name=model_name, **take(*managed, "gpu_memory_utilization", "max_model_len", "extra_args")
        )
    if kind == "llamacpp":
        from phage.node.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            model, name=model_name, **take(*managed, "max_model_len", "gpu_layers", "extra_args")
        )
    if kind == "openai":
        from phage.node.engines.openai_compat import OpenAIEngine

        if "url" not in given:
            raise InvalidInput("the openai engine needs the server's URL (--engine-url)", field="engine_url")
        return OpenAIEngine(str(given["url"]), model, name=model_name, **take("api_key", "timeout_s"))
    raise InvalidInput(f"unknown engine {kind!r}; known: {', '.join(ENGINE_KINDS)} or auto", field="engine")
