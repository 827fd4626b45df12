"""llama.cpp, run by the node as ``llama-server`` on a GGUF file, spoken to over its OpenAI API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phage.node.engines.managed import ManagedServerEngine


class LlamaCppEngine(ManagedServerEngine):
    """``llama-server -m FILE.gguf`` on a loopback port; ``/health`` answers 503 until the model is in."""

    name = "llamacpp"
    command_env = "PHAGE_LLAMACPP_COMMAND"

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int | None = None,
        gpu_layers: int | None = None,
        extra_args: Sequence[str] = (),
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.context = max_model_len or 4096
        """Context size (``-c``): llama.cpp allocates the KV cache for it up front."""
        self.gpu_layers = gpu_layers
        """Layers offloaded to the GPU (``-ngl``); None leaves llama.cpp's default."""
        self.extra_args = list(extra_args)

    def default_name(self) -> str:
        """The file's stem (``qwen2.5-0.5b-instruct-q4_k_m``), not its whole path."""
        return Path(self.model_path).name.removesuffix(".gguf") or self.model_path

    def argv(self, port: int) -> list[str]:
        """``llama-server -m FILE --host 127.0.0.1 --port P -c CTX [-ngl N] --alias NAME``."""
        args = [*(self.command or ["llama-server"]), "-m", self.model_path]
        args += ["--host", "127.0.0.1", "--port", str(port), "-c", str(self.context)]
        if self.gpu_layers is not None:
            args += ["-ngl", str(self.gpu_layers)]
        return [*args, "--alias", self.model, *self.extra_args]
