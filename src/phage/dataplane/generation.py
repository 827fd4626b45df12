"""Text generation for a sharded model: the tokenizer here, the blocks on a chain of nodes.

Streams exactly as a whole model does through the in-process engine — the same prompt
rendering, stop strings, finish reasons and token counts (``domain/text.py``) — whoever
drives it (the coordinator today; the chain code does not care where it runs). Closing
the stream early ends every hop's session, which frees their caches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from phage.dataplane.chain import ChainSession, Router, generate_tokens
from phage.dataplane.checks import CheckPolicy
from phage.dataplane.sampling import Sampling
from phage.dataplane.transport import Dial, TLSIdentity
from phage.domain.text import apply_stops, prompt_text, safe_prefix


@dataclass(frozen=True, slots=True)
class TextRequest:
    """One completion: a raw ``prompt`` or chat ``messages`` ((role, content) pairs), and sampling."""

    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int = 256
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_p: float | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the text; the last one has ``finish_reason``, the counts and the chain it ended on."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chain: tuple[str, ...] = ()
    checked: int = 0
    """Steps recomputed on other nodes during the generation (checked activations)."""


@dataclass
class ChainStats:
    """How chain steps went, summed over every session (``/metrics``)."""

    node_to_node: int = 0
    """Steps each hop handed straight to the next."""
    through_driver: int = 0
    """Steps whose every hop's input came from the driver: each prompt's prefill, and every step of
    chains with checked or relayed hops, or whose nodes could not reach each other."""
    failovers: int = 0
    """Hops replaced mid-generation."""

    def add(self, session: ChainSession) -> None:
        """A session ended: count its steps."""
        self.node_to_node += session.pushed_steps
        self.through_driver += session.steps - session.pushed_steps
        self.failovers += session.failovers


class ShardedGenerator:
    """Generation for the sharded model ``name`` through chains ``route`` finds."""

    def __init__(
        self,
        name: str,
        checkpoint: str,
        identity: TLSIdentity,
        route: Router,
        *,
        checks: CheckPolicy | None = None,
        dial: Dial | None = None,
        stats: ChainStats | None = None,
    ) -> None:
        self.name = name
        self.stats = stats if stats is not None else ChainStats()
        self.checkpoint = checkpoint
        self.identity = identity
        self.route = route
        self.checks = checks
        self.dial = dial
        self._tokenizer: Any = None

    async def start(self) -> None:
        """Load the tokenizer (the only part of the model kept here).

        torch and transformers are imported in the worker thread too: importing them takes
        seconds of CPU, and on the event loop that would stall every heartbeat the
        coordinator answers meanwhile — long enough for the nodes' leases to lapse.
        """
        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(_load_tokenizer, self.checkpoint)

    async def stream(
        self, request: TextRequest, *, checks: CheckPolicy | None = None
    ) -> AsyncIterator[TextDelta]:
        """Text deltas as tokens come through the chain, then the final delta.

        ``checks`` replaces the generator's policy for this one session (a task that asks for
        every stage to be checked).
        """
        await self.start()
        tok = self._tokenizer
        prompt = [int(t) for t in tok(prompt_text(tok, request.prompt, request.messages))["input_ids"]]
        sampling = Sampling(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            top_p=request.top_p,
            eos_token_id=tok.eos_token_id,
        )
        ids: list[int] = []
        sent = 0
        finish = "length"
        policy = checks if checks is not None else self.checks
        session = ChainSession(self.name, self.identity, self.route, checks=policy, dial=self.dial)
        try:
            tokens = generate_tokens(session, prompt, sampling)
            async with session, contextlib.aclosing(tokens):  # a stop string ends the tokens first
                async for token in tokens:
                    ids.append(token)
                    cut, hit = apply_stops(tok.decode(ids, skip_special_tokens=True), request.stop)
                    safe = cut if hit else safe_prefix(cut, request.stop)
                    if len(safe) > sent:
                        yield TextDelta(safe[sent:])
                        sent = len(safe)
                    if hit:
                        finish = "stop"
                        break
                else:
                    finish = "length" if len(ids) >= request.max_tokens else "stop"
                    tail = apply_stops(tok.decode(ids, skip_special_tokens=True), request.stop)[0]
                    if len(tail) > sent:
                        yield TextDelta(tail[sent:])
                chain = tuple(h.node_id for h in session.hops)
                checked = session.checker.checked if session.checker is not None else 0
        finally:  # a session cut short counts too
            self.stats.add(session)
        yield TextDelta("", finish, len(prompt), len(ids), chain, checked)


def _load_tokenizer(checkpoint: str) -> Any:
    import torch  # noqa: F401  (the chain's tensors need it; imported here, off the event loop)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)
