"""vLLM, run by the node as ``vllm serve`` and spoken to over its OpenAI-compatible API."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from typing import Any

from phage.node.engines.managed import ManagedServerEngine


class VLLMEngine(ManagedServerEngine):
    """``vllm serve MODEL`` on a loopback port, with the node's memory and context settings."""

    name = "vllm"
    command_env = "PHAGE_VLLM_COMMAND"

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        extra_args: Sequence[str] = (),
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.gpu_memory_utilization = gpu_memory_utilization
        """Share of the GPU's memory vLLM may take (its default, 0.9, when None)."""
        self.max_model_len = max_model_len
        """Context length; None lets vLLM take the model's own."""
        self.extra_args = list(extra_args)

    def prefix(self) -> list[str]:
        """The override, else ``vllm``, else the API server module of an installed package."""
        if self.command:
            return list(self.command)
        if shutil.which("vllm"):
            return ["vllm"]
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]

    def argv(self, port: int) -> list[str]:
        """``vllm serve MODEL --host 127.0.0.1 --port P …`` (``--model MODEL`` for the module form)."""
        prefix = self.prefix()
        if prefix[-1].endswith("api_server"):
            args = [*prefix, "--model", self.model_path]
        else:
            args = [*prefix, "serve", self.model_path]
        args += ["--host", "127.0.0.1", "--port", str(port)]
        if self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.model != self.model_path:
            args += ["--served-model-name", self.model]
        return args + self.extra_args
