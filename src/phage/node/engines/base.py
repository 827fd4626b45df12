"""The engine interface: generate, health, the model it serves.

A node talks to every engine — an in-process transformers model today, vLLM or
llama.cpp servers later — through this, so the work loop never knows which.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from phage.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion request."""

    prompt: str
    max_tokens: int = 256
    temperature: float = 0.8
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """One completion and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


class Engine(abc.ABC):
    """A model server the node runs or talks to."""

    name: str = ""
    """Engine kind: ``transformers``, ``vllm``, ``llamacpp``, ``openai``."""

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """The model name tasks ask for."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model / start the server; returns once it can serve."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> Generation:
        """A whole completion."""

    async def health(self) -> bool:
        """True when the engine can serve now."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release the model / stop the server."""


def make_engine(kind: str, model: str, *, model_name: str | None = None) -> Engine:
    """An engine by kind (``transformers``), serving ``model`` (a path or hub id)."""
    if kind == "transformers":
        from phage.node.engines.transformers import TransformersEngine

        return TransformersEngine(model, name=model_name)
    raise InvalidInput(f"unknown engine {kind!r}; available here: transformers", field="engine")
