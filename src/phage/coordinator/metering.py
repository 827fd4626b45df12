"""Metering chat and completions: admit (rate limits, credit hold), count what was delivered, settle.

A node reports its own token counts, and in an open pool a node is a stranger: it
could bill a key for tokens it never produced. So the coordinator charges what it
*saw*: the completion tokens it streamed to the client (one per text chunk the node
sent; a chunk is at least one token), and, when the node finished and reported a
count, no more than that count, no more than the text it delivered could hold (a token
is at least one byte, plus one for the end-of-text token) and never more than
``max_tokens``. Prompt tokens are capped by the prompt's size the same way. A stream
cut short (the client hung up, stalled or the node died) is charged for what was
delivered and an estimate of its prompt, since no node count ever came.

Settling runs in a task of its own: a client hanging up cancels the HTTP handler, and
the charge must land anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phage.coordinator.key_rates import KeyRates, Limits
from phage.coordinator.keys import Principal
from phage.domain import Task, TaskResult
from phage.domain.generate import GenerateSpec
from phage.domain.ids import new_id
from phage.errors import PaymentRequired
from phage.store.sql_usage import Hold, RequestRecord, UsageRecords, task_hold_id

log = logging.getLogger("phage.usage")

HOLD_TTL_S = 3600.0
"""A hold a coordinator never settled (it died) is given back after this long."""
TEMPLATE_TOKENS_PER_MESSAGE = 16
"""Chat templates wrap each message in a few special tokens; a generous allowance."""
TEMPLATE_TOKENS = 64


def prompt_bound(prompt_bytes: int, messages: int) -> int:
    """The most tokens a prompt of this size can be: a token is at least one byte, plus the template's."""
    return prompt_bytes + TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * messages


def prompt_estimate(prompt_bytes: int, messages: int) -> int:
    """A typical count (about four bytes a token) for a prompt no node counted."""
    return max(1, prompt_bytes // 4 + 4 * messages)


@dataclass(frozen=True, slots=True)
class RateDefaults:
    """The coordinator's per-key limits for keys without their own (None: unlimited)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    def for_key(self, who: Principal) -> Limits:
        """A key's own limits, else these."""
        return Limits(
            who.requests_per_minute if who.requests_per_minute is not None else self.requests_per_minute,
            who.tokens_per_minute if who.tokens_per_minute is not None else self.tokens_per_minute,
            who.max_concurrent if who.max_concurrent is not None else self.max_concurrent,
        )


@dataclass(slots=True)
class Ticket:
    """One metered request while it runs: what it may spend and what it has been seen to deliver."""

    id: str
    key_id: str
    kind: str
    model: str
    max_tokens: int
    prompt_bytes: int
    messages: int
    started_at: float
    hold_id: str | None = None
    node_id: str = ""
    ttft_s: float | None = None
    chunks: int = 0
    """Text chunks the coordinator passed on to the client."""
    text_bytes: int = 0
    reported_prompt: int = 0
    reported_completion: int = 0
    finished: bool = False
    """The node sent its final chunk with counts."""
    outcome: str = "client_closed"
    checked: str = ""
    settled: bool = field(default=False, repr=False)

    def delivered(self, text: str, chunks: int, now: float) -> None:
        """Text went out to the client (``chunks`` node chunks' worth)."""
        if self.ttft_s is None and text:
            self.ttft_s = now - self.started_at
        self.chunks += chunks
        self.text_bytes += len(text.encode())

    def restart(self) -> None:
        """The request moves to another node before the client saw anything: forget the first try."""
        self.chunks = self.text_bytes = 0
        self.ttft_s = None

    def charge(self) -> tuple[int, int]:
        """(prompt, completion) tokens to charge: what was delivered, capped by what was reported."""
        if self.finished:
            completion = min(self.reported_completion, self.text_bytes + 1, self.max_tokens)
            prompt = min(self.reported_prompt, prompt_bound(self.prompt_bytes, self.messages))
        else:
            completion = min(self.chunks, self.max_tokens)
            prompt = prompt_estimate(self.prompt_bytes, self.messages) if self.node_id else 0
        return prompt, completion


class Meter:
    """Admits metered requests (rate limits, credit) and settles what they used."""

    def __init__(
        self, store: UsageRecords, clock: Callable[[], float], defaults: RateDefaults, window_s: float = 60.0
    ) -> None:
        self._store = store
        self._clock = clock
        self.defaults = defaults
        self.rates = KeyRates(clock, window_s)
        self._settling: set[asyncio.Task[None]] = set()
        self.settled = 0
        self.observers: list[Callable[[RequestRecord], None]] = []
        """Called with each settled request (metrics, the access log)."""

    async def begin(
        self, who: Principal, kind: str, model: str, max_tokens: int, prompt_bytes: int, messages: int
    ) -> Ticket:
        """Admit a request: 429 over a rate or concurrency limit, 402 when the credit left is too small.

        Keys with a credit limit hold the most this request can cost (its prompt's bound
        plus ``max_tokens``) until it settles, so a concurrent request sees that credit as
        taken. A request is admitted only while the credit left (after those holds) covers
        its prompt's estimate: the prompt is charged even when the answer is cut short,
        and admitting on any credit left would let a key with one token left push a
        whole context's worth of prompt through. So at most one request crosses the limit,
        by at most its ``max_tokens`` plus what its prompt counts beyond the estimate.
        """
        now = self._clock()
        self.rates.admit(who.key_id, self.defaults.for_key(who))
        ticket = Ticket(new_id("r"), who.key_id, kind, model, max_tokens, prompt_bytes, messages, now)
        if who.credit_limit_tokens is None:
            return ticket
        needs = prompt_estimate(prompt_bytes, messages)
        hold = Hold(new_id("h"), who.key_id, prompt_bound(prompt_bytes, messages) + max_tokens, needs)
        try:
            refused = await self._store.hold_credit(hold, now, now + HOLD_TTL_S)
        except BaseException:
            self.rates.done(who.key_id, 0)
            raise
        if refused is not None:
            self.rates.done(who.key_id, 0)
            left = max(0, refused.limit - refused.used)
            raise PaymentRequired(
                f"this API key has used {refused.used} of its {refused.limit} tokens "
                f"(including requests in flight); {left} left, and this request's prompt needs "
                f"about {needs}; an admin can top it up",
                field="Authorization",
            )
        ticket.hold_id = hold.id
        return ticket

    def finish(self, ticket: Ticket) -> asyncio.Task[None] | None:
        """Charge the request and release its hold and its rate slot, in a task of its own (once)."""
        if ticket.settled:
            return None
        ticket.settled = True
        prompt, completion = ticket.charge()
        self.rates.done(ticket.key_id, prompt + completion)
        now = self._clock()
        rec = RequestRecord(
            ticket.id,
            ticket.key_id,
            ticket.kind,
            ticket.model,
            ticket.node_id,
            ticket.started_at,
            now - ticket.started_at,
            ticket.ttft_s,
            prompt,
            completion,
            ticket.reported_completion,
            ticket.outcome,
            ticket.checked,
        )
        task = asyncio.get_running_loop().create_task(self._settle(ticket.hold_id, rec, now))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    async def _settle(self, hold_id: str | None, rec: RequestRecord, now: float) -> None:
        for observe in self.observers:
            observe(rec)
        try:
            await self._store.settle(hold_id, rec, now)
            self.settled += 1
        except Exception:
            log.exception("could not record the usage of request %s (key %s)", rec.id, rec.key_id)

    async def hold_tasks(self, who: Principal, tasks: Sequence[Task]) -> None:
        """Hold each generate task's worst case until it ends; 402, holding nothing, if one does not fit.

        A generate task can cost each attempt its prompt's bound plus ``max_tokens``; that is
        held from submit until the task is terminal (each attempt is charged as it reports),
        so concurrent submits and batches on one key see each other's tasks as spent, like
        concurrent chats. A task is admitted while the credit left covers its prompt's
        estimate: at most one task of a batch crosses the limit.
        """
        if who.credit_limit_tokens is None:
            return
        holds = []
        for task in tasks:
            gen = task.spec.generate
            if gen is None:
                continue
            prompt = len(gen.prompt.encode())
            worst = max(1, task.replicas) * (prompt_bound(prompt, 1) + gen.max_tokens)
            holds.append(Hold(task_hold_id(task.id), who.key_id, worst, prompt_estimate(prompt, 1)))
        refused = await self._store.hold_task_credit(holds, self._clock())
        if refused is not None:
            left = max(0, refused.limit - refused.used)
            raise PaymentRequired(
                f"this API key has used {refused.used} of its {refused.limit} tokens (including requests "
                f"and generate tasks in flight); {left} left is too little for these generate tasks; "
                "an admin can top it up",
                field="Authorization",
            )

    async def charge_generation(
        self, owner: str, gen: GenerateSpec, node_id: str, result: TaskResult
    ) -> None:
        """Charge a generate task's owner for one attempt's generation, capped like a chat's."""
        prompt_tokens = min(result.prompt_tokens, prompt_bound(len(gen.prompt.encode()), 1))
        completion = min(result.completion_tokens, gen.max_tokens)
        now = self._clock()
        rec = RequestRecord(
            new_id("r"),
            owner,
            "generate",
            gen.model,
            node_id,
            now - result.wall_time_s,
            result.wall_time_s,
            None,
            prompt_tokens,
            completion,
            result.completion_tokens,
            "error" if result.error else ("passed" if result.passed else "failed"),
        )
        for observe in self.observers:
            observe(rec)
        await self._store.settle(None, rec, now)

    async def drain(self) -> None:
        """Wait for charges being written (at shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
