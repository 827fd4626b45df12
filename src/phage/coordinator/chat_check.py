"""Checked chat: a trusted node re-scores answers from untrusted nodes, after the response.

Which answers are checked is the pool's policy: a share of untrusted nodes' answers
(``chat_check_untrusted``: 1 checks all, 0 none) and of trusted ones'
(``chat_check_trusted``, a sample). A check never sits on the client's path: it starts
once the answer was delivered and metered, goes to another, trusted node serving the
same model as a check order (the answer's token ids, scored in one forward pass), and
its verdict is written on the request's usage-log row: ``pass``, ``fail``, or
``unchecked`` when no trusted node could score it. A failed check is evidence: the node
is quarantined with the reason, and gets no more chats or tasks until an admin
releases it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from phage.coordinator.chat import ChatRouter
from phage.domain.chatcheck import Exchange, Scores, Verdict, judge
from phage.errors import Unavailable
from phage.protocol.v1 import phage_pb2 as pb
from phage.store.sql_usage import UsageRecords

log = logging.getLogger("phage.chat.check")

CHECK_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """What share of answers is checked, by the trust of the node that gave them."""

    untrusted: float = 1.0
    trusted: float = 0.0

    def rate(self, trusted: bool) -> float:
        """The share of a node's answers to check."""
        return self.trusted if trusted else self.untrusted


@dataclass(frozen=True, slots=True)
class Answer:
    """One delivered answer to check."""

    request_id: str
    node_id: str
    model: str
    order: pb.ChatOrder
    exchange: Exchange


@dataclass(slots=True)
class CheckStats:
    """Totals for /metrics and the benchmark: checks done, failed, impossible; their cost."""

    checked: int = 0
    failed: int = 0
    unchecked: int = 0
    tokens: int = 0
    seconds: float = 0.0
    """Wall time the checking nodes spent (one node per check): node-seconds."""


class ChatChecker:
    """Schedules checks of delivered answers and acts on their verdicts."""

    def __init__(
        self,
        router: ChatRouter,
        checkers: Callable[[str, str], list[str]],
        trusted: Callable[[str], bool],
        quarantine: Callable[[str, str], Awaitable[None]],
        store: UsageRecords,
        policy: CheckPolicy,
    ) -> None:
        self._router = router
        self._checkers = checkers
        """(model, checked node) -> trusted nodes serving the model that may check it."""
        self._trusted = trusted
        self._quarantine = quarantine
        self._store = store
        self.policy = policy
        self.stats = CheckStats()
        self._running: set[asyncio.Task[None]] = set()

    def wants(self, node_id: str) -> bool:
        """Should this node's answer be checked (the policy's share for its trust)?"""
        rate = self.policy.rate(self._trusted(node_id))
        return rate >= 1.0 or (rate > 0 and random.random() < rate)

    def schedule(self, answer: Answer, recorded: asyncio.Task[None] | None) -> None:
        """Check an answer in the background once its usage row is written."""
        task = asyncio.get_running_loop().create_task(self._run(answer, recorded))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def drain(self) -> None:
        """Wait for running checks (tests, shutdown)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, answer: Answer, recorded: asyncio.Task[None] | None) -> None:
        if recorded is not None:
            await asyncio.gather(recorded, return_exceptions=True)
        try:
            verdict = await self.check(answer)
        except Unavailable as exc:
            self.stats.unchecked += 1
            log.info(
                "chat %s from node %s not checked: %s", answer.request_id, answer.node_id[:12], exc.message
            )
            await self._store.set_checked(answer.request_id, "unchecked")
            return
        self.stats.checked += 1
        self.stats.tokens += len(answer.exchange.token_ids)
        if verdict.passed:
            await self._store.set_checked(answer.request_id, "pass")
            return
        self.stats.failed += 1
        await self._store.set_checked(answer.request_id, "fail")
        await self._quarantine(
            answer.node_id, f"checked chat {answer.request_id} ({answer.model}) failed: {verdict.reason}"
        )

    async def check(self, answer: Answer) -> Verdict:
        """Have a trusted node re-score the answer; Unavailable when none can."""
        if not answer.exchange.token_ids:
            return Verdict(False, "the node sent no token ids for its answer")
        tried: set[str] = set()
        last = Unavailable(f"no trusted node serving {answer.model!r} can check node {answer.node_id[:12]}…")
        for _ in range(2):
            try:
                node_id = self._router.pick(self._checkers(answer.model, answer.node_id), tried)
            except Unavailable:
                break
            tried.add(node_id)
            order = pb.ChatOrder()
            order.CopyFrom(answer.order)
            order.check = True
            order.check_token_ids.extend(answer.exchange.token_ids)
            started = time.monotonic()
            call = self._router.open(node_id, answer.model, order)
            try:
                async for chunk in call.deltas(CHECK_TIMEOUT_S):
                    if chunk.finish_reason == "checked":
                        self.stats.seconds += time.monotonic() - started
                        return judge(answer.exchange, _scores(chunk.score))
            except Unavailable as exc:
                last = exc
            finally:
                self._router.close(call)
        raise last


def _scores(s: pb.ChatScore) -> Scores:
    return Scores(
        tuple(s.greedy_gap),
        tuple(s.logprob),
        tuple(s.entropy),
        tuple(s.variance),
        s.decoded,
        s.eos_token_id if s.has_eos else None,
    )
