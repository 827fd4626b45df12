"""Chat and completions for sharded models: the coordinator drives a chain of nodes.

The coordinator holds the tokenizer and a data-plane certificate from its own CA;
each request opens a session on a chain of nodes that together hold every block
(:class:`phage.dataplane.generation.ShardedGenerator`), the way Petals' client does.
A node that fails mid-generation, or whose activations fail a check, is replaced
and its cache rebuilt by replay, so the client sees one stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from phage.coordinator.sharded import ShardedModels, UsageEntry, UsageLog
from phage.dataplane.chain import Hop
from phage.dataplane.checks import CheckPolicy, Evidence, Verifier
from phage.dataplane.generation import ChainStats, ShardedGenerator, TextDelta, TextRequest
from phage.dataplane.relay import RelayHub
from phage.dataplane.transport import TLSIdentity, issue_identity
from phage.domain.blocks import BlockRange
from phage.errors import Unavailable
from phage.pki.ca import CertificateAuthority
from phage.pki.identity import NodeIdentity
from phage.protocol.v1 import phage_pb2 as pb


def request_from_order(order: pb.ChatOrder) -> TextRequest:
    """What a chat order asks the model for."""
    return TextRequest(
        prompt=order.prompt,
        messages=tuple((m.role, m.content) for m in order.messages),
        max_tokens=order.max_tokens or 256,
        temperature=order.temperature,
        stop=list(order.stop),
        seed=order.seed if order.has_seed else None,
        top_p=order.top_p if order.has_top_p else None,
    )


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole generation through a chain (a generate task's candidate)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    chain: tuple[str, ...]
    """The nodes of the chain it ended on, first hop first."""
    checked: int
    """Steps recomputed on other nodes."""


def coordinator_identity(ca: CertificateAuthority, key_dir: Path) -> TLSIdentity:
    """The coordinator's own data-plane identity, issued by its CA (kept in ``key_dir``)."""
    key_dir.mkdir(parents=True, exist_ok=True)
    return issue_identity(ca, NodeIdentity.load_or_create(key_dir))


class ShardedChat:
    """Generation for every declared sharded model."""

    def __init__(
        self,
        sharded: ShardedModels,
        identity: TLSIdentity,
        usage: UsageLog,
        *,
        check_rate: float,
        trusted: Callable[[str], bool],
        quarantine: Callable[[str, str], Awaitable[None]],
        relay: RelayHub | None = None,
    ) -> None:
        self.sharded = sharded
        self.identity = identity
        self.usage = usage
        self.check_rate = check_rate
        self.trusted = trusted
        self.quarantine = quarantine
        self.dial = (relay or RelayHub()).dialler(identity)
        """Hops and verifiers are dialled directly, or through the relay for nodes that asked for it."""
        self._engines: dict[str, ShardedGenerator] = {}
        self.stats = ChainStats()
        """How chain steps went, over every sharded model (``/metrics``)."""

    def engine(self, model: str) -> ShardedGenerator:
        """The generator for ``model`` (its tokenizer is loaded once)."""
        declared = self.sharded.get(model)
        engine = self._engines.get(model)
        if engine is None or engine.checkpoint != declared.checkpoint:

            async def route(start: int, avoid: Collection[str]) -> list[Hop]:
                return await self.sharded.route(model, start, avoid)

            async def find(blocks: BlockRange, start: int, avoid: Collection[str]) -> Verifier | None:
                return self.sharded.find_verifier(model, blocks, start, avoid, self.trusted)

            async def report(evidence: Evidence) -> None:
                self.sharded.leave(evidence.node_id)
                await self.quarantine(evidence.node_id, evidence.describe())

            checks = CheckPolicy(
                rate=self.check_rate,
                untrusted=lambda node_id: not self.trusted(node_id),
                find_verifier=find,
                report=report,
            )
            engine = ShardedGenerator(
                model,
                declared.checkpoint,
                self.identity,
                route,
                checks=checks,
                dial=self.dial,
                stats=self.stats,
            )
            self._engines[model] = engine
        return engine

    async def stream(self, user: str, model: str, order: pb.ChatOrder) -> AsyncIterator[TextDelta]:
        """Deltas of one generation; 503 (naming the missing blocks) when no chain can run."""
        async for delta in self._generate(user, model, request_from_order(order)):
            yield delta

    async def complete(
        self, user: str, model: str, request: TextRequest, *, check_every_stage: bool = False
    ) -> Completion:
        """One whole generation; ``check_every_stage`` recomputes every step of every hop elsewhere.

        Checking every stage treats every hop as unproven, trusted or not: a disagreement
        with the verifier is settled by a referee, and a hop nobody else can recompute
        goes unchecked (``checked`` says how many steps were).
        """
        checks = None
        if check_every_stage:
            policy = self.engine(model).checks
            assert policy is not None
            checks = replace(policy, rate=1.0, untrusted=lambda _node_id: True)
        parts: list[str] = []
        async for d in self._generate(user, model, request, checks):
            parts.append(d.text)
            if d.finish_reason is not None:
                return Completion(
                    "".join(parts), d.finish_reason, d.prompt_tokens, d.completion_tokens, d.chain, d.checked
                )
        raise Unavailable(f"the chain for {model!r} ended without finishing the generation")

    async def _generate(
        self, user: str, model: str, request: TextRequest, checks: CheckPolicy | None = None
    ) -> AsyncIterator[TextDelta]:
        self.sharded.require_ready(model)
        async for delta in self.engine(model).stream(request, checks=checks):
            if delta.finish_reason is not None:
                self.usage.add(
                    UsageEntry(
                        user, model, delta.prompt_tokens, delta.completion_tokens, delta.chain, time.time()
                    )
                )
            yield delta
