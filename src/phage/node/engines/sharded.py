"""A sharded model as an engine: the tokenizer here, the blocks on a chain of nodes.

Implements :class:`Engine` so a sharded model streams exactly as a whole model
does — the same deltas, stop strings, finish reasons and token counts — whoever
drives it (the coordinator today; a node could, with a route it asks for).
Closing the stream early ends every hop's session, which frees their caches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from phage.dataplane import TLSIdentity
from phage.node.chain import ChainSession, Router, Sampling, generate_tokens
from phage.node.checks import CheckPolicy
from phage.node.engines.base import Delta, Engine, GenerationRequest
from phage.node.engines.transformers import _apply_stops, _safe_prefix, prompt_text


class ShardedEngine(Engine):
    """Generation for the sharded model ``name`` through chains ``route`` finds."""

    name = "sharded"

    def __init__(
        self,
        name: str,
        checkpoint: str,
        identity: TLSIdentity,
        route: Router,
        *,
        checks: CheckPolicy | None = None,
    ) -> None:
        self._name = name
        self.checks = checks
        self.checkpoint = checkpoint
        self.identity = identity
        self.route = route
        self._tokenizer: Any = None

    @property
    def model(self) -> str:
        """The sharded model's name."""
        return self._name

    async def start(self) -> None:
        """Load the tokenizer (the only part of the model kept here)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.checkpoint)

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Text deltas as tokens come through the chain, then the final delta with counts."""
        return self.stream_through(request, [])

    async def stream_through(self, request: GenerationRequest, chain: list[str]) -> AsyncIterator[Delta]:
        """As :meth:`stream`; ``chain`` is filled with the node ids of the chain the generation ended on."""
        await self.start()
        tok = self._tokenizer
        prompt = [int(t) for t in tok(prompt_text(tok, request))["input_ids"]]
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
        async with ChainSession(self._name, self.identity, self.route, checks=self.checks) as session:
            async for token in generate_tokens(session, prompt, sampling):
                ids.append(token)
                text = tok.decode(ids, skip_special_tokens=True)
                cut, hit = _apply_stops(text, request.stop)
                safe = cut if hit else _safe_prefix(cut, request.stop)
                if len(safe) > sent:
                    yield Delta(safe[sent:])
                    sent = len(safe)
                if hit:
                    finish = "stop"
                    break
            else:
                finish = "length" if len(ids) >= request.max_tokens else "stop"
                tail = _apply_stops(tok.decode(ids, skip_special_tokens=True), request.stop)[0]
                if len(tail) > sent:
                    yield Delta(tail[sent:])
            chain[:] = [h.node_id for h in session.hops]
        yield Delta("", finish, len(prompt), len(ids))
