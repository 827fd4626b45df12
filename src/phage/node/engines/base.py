"""The engine interface: generate, stream, health, load a model, count tokens.

A node talks to every engine — an in-process transformers model, a vLLM or
llama.cpp server it manages, or an OpenAI-compatible server someone else runs —
through this, so the work loop and the chat path never know which.

Streaming is the primitive: :meth:`Engine.stream` yields text deltas and ends
with one :class:`Delta` that carries the finish reason and the token counts.
Closing the iterator early (``aclose()``, or leaving an ``async for``) must stop
the generation on the engine: that is how a chat client that hangs up frees the
GPU.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from phage.domain.chatcheck import Scores
from phage.errors import EngineError


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat conversation (OpenAI's ``role`` / ``content``)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion request: a raw ``prompt``, or chat ``messages`` (then ``prompt`` is unused)."""

    prompt: str = ""
    max_tokens: int = 256
    temperature: float = 0.8
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    messages: tuple[ChatMessage, ...] = ()
    top_p: float | None = None
    extras_json: str = ""
    """OpenAI parameters for engines that hand them to a server (tools, tool_choice, response_format)."""

    @property
    def is_chat(self) -> bool:
        """True when the engine should apply its chat template to ``messages``."""
        return bool(self.messages)


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed completion; the last one has ``finish_reason`` and the counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: tuple[int, ...] = ()
    """On the last delta, where the engine knows them: the completion's token ids (checked chat)."""
    tool_calls_json: str = ""
    """On the last delta: the tool calls the model made (OpenAI's shape, as JSON)."""

    @property
    def final(self) -> bool:
        """True on the stream's last delta."""
        return self.finish_reason is not None


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
        """The model loaded now, by the name tasks and chat requests use ("" when none)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model / start the server; returns once it can serve."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield text deltas, then a final delta with the finish reason and token counts.

        Closing the iterator before the end stops the generation.
        """

    async def generate(self, request: GenerationRequest) -> Generation:
        """A whole completion (the stream, collected)."""
        parts: list[str] = []
        last = Delta(finish_reason="stop")
        async for delta in self.stream(request):
            parts.append(delta.text)
            if delta.final:
                last = delta
        return Generation(
            "".join(parts), last.prompt_tokens, last.completion_tokens, last.finish_reason or "stop"
        )

    async def score(self, request: GenerationRequest, token_ids: list[int]) -> Scores:
        """Rate each of ``token_ids`` as a continuation of the request's prompt (checked chat).

        One forward pass over prompt + completion (teacher forcing); engines that cannot
        see logits say so, and such a node is not asked to check others.
        """
        raise EngineError(f"the {self.name} engine cannot re-score answers")

    async def health(self) -> bool:
        """True when the engine can serve now."""
        return True

    def models(self) -> list[str]:
        """Models this engine can serve without loading anything (the loaded one by default)."""
        return [self.model] if self.model else []

    @property
    def can_load(self) -> bool:
        """True when :meth:`load` can switch to a model the coordinator names."""
        return False

    async def load(self, model: str) -> None:
        """Switch to ``model`` (``HeartbeatResponse.load_model``); returns once it serves it."""
        if model == self.model:
            return
        raise EngineError(f"the {self.name} engine cannot switch models (it serves {self.model!r})")

    def memory_bytes(self) -> int | None:
        """Measured memory (VRAM, or RAM on CPU) the loaded model takes, when the engine knows it."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release the model / stop the server."""
