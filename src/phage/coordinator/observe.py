"""Figures derived from the live feed: task outcomes, queue wait and run times.

The coordinator publishes every task state change on its :class:`EventBus`; the
dashboard and the Prometheus exporter both need those changes turned into
numbers. One :class:`TaskObserver` per application keeps a single subscription
open (the bus builds task events only while someone listens) and hands each
measurement to its listeners.

Only what the feed shows is measured: tasks recovered from the store at start,
or events dropped because the observer fell behind (counted in ``dropped``),
have no timings. Memory is bounded: at most ``max_tracked`` unfinished tasks
are remembered, the oldest forgotten first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from phage.coordinator.core import Coordinator

log = logging.getLogger("phage.observe")

OUTCOMES = ("verified", "failed", "cancelled")
UNKNOWN_KIND = "unknown"


@dataclass(slots=True)
class _Open:
    kind: str
    queued_at: float | None = None
    """When the task last entered the queue (submission or requeue)."""
    dispatched_at: float | None = None
    """When a node first took it."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A task reached a final state."""

    task_id: str
    kind: str
    outcome: str
    run_s: float | None
    """From the first dispatch to the final state; None when the dispatch was not seen."""


DispatchListener = Callable[[str, float], None]
"""Called with (kind, seconds the task waited in the queue) for each dispatch."""
FinishListener = Callable[[Finished], None]


class TaskObserver:
    """One feed subscription, turned into outcome counts and timings for its listeners."""

    def __init__(self, coordinator: Coordinator, *, max_tracked: int = 100_000) -> None:
        self._c = coordinator
        self._max = max_tracked
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        """Recently finished ids: a second 'cancelled' for one task must not count twice."""
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.dropped = 0
        """Events the bus dropped because this observer fell behind."""
        self.on_dispatch: list[DispatchListener] = []
        self.on_finish: list[FinishListener] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the subscription loop on the running event loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="phage-observer")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with self._c.bus.subscribe() as sub:
            while True:
                event = await sub.next()
                try:
                    self.handle(event)
                except Exception:  # one odd event must not end the measurements
                    log.exception("could not account for event %r", event)

    def handle(self, event: dict[str, Any]) -> None:
        """Account for one feed event."""
        kind = event.get("type")
        if kind == "lagged":
            self.dropped += int(event.get("dropped", 0))
            return
        if kind != "task":
            return
        task_id = str(event.get("id", ""))
        state = str(event.get("state", ""))
        ts = float(event.get("ts", 0.0))
        if state == "queued":
            entry = self._entry(task_id, str(event.get("kind") or ""))
            entry.queued_at = ts
        elif state == "dispatched":
            entry = self._entry(task_id, self._attempt_kind(event))
            if entry.queued_at is not None:
                wait = max(0.0, ts - entry.queued_at)
                for on_dispatch in self.on_dispatch:
                    on_dispatch(entry.kind, wait)
            if entry.dispatched_at is None:
                entry.dispatched_at = ts
        elif state in OUTCOMES:
            self._finish(task_id, state, ts)

    def _entry(self, task_id: str, kind: str) -> _Open:
        entry = self._open.get(task_id)
        if entry is None:
            entry = self._open[task_id] = _Open(kind or UNKNOWN_KIND)
            if len(self._open) > self._max:
                self._open.popitem(last=False)
        elif entry.kind == UNKNOWN_KIND and kind:
            entry.kind = kind
        return entry

    def _attempt_kind(self, event: dict[str, Any]) -> str:
        """A dispatched event names its attempt; the pool knows the attempt's kind while it is open."""
        att = self._c.pool.attempts.get(str(event.get("attempt", "")))
        return att.kind if att is not None and att.kind else ""

    def _finish(self, task_id: str, outcome: str, ts: float) -> None:
        if task_id in self._done:
            return
        self._done[task_id] = None
        if len(self._done) > self._max:
            self._done.popitem(last=False)
        entry = self._open.pop(task_id, None)
        self.outcomes[outcome] += 1
        run_s = None
        if entry is not None and entry.dispatched_at is not None:
            run_s = max(0.0, ts - entry.dispatched_at)
        done = Finished(task_id, entry.kind if entry is not None else UNKNOWN_KIND, outcome, run_s)
        for on_finish in self.on_finish:
            on_finish(done)


def observer_for(app: FastAPI, coordinator: Coordinator) -> TaskObserver:
    """The application's one observer, made on first use and started as soon as an event loop runs."""
    observer = getattr(app.state, "phage_observer", None)
    if observer is None:
        observer = TaskObserver(coordinator)
        app.state.phage_observer = observer
        start_soon(app, "observer", observer.start)
    assert isinstance(observer, TaskObserver)
    return observer


def start_soon(app: FastAPI, name: str, start: Callable[[], None]) -> None:
    """Call ``start`` now if an event loop is running here, else before the app serves its first request.

    The coordinator's server builds the app inside its running loop, so background
    work normally starts at once; an app built outside a loop (a test client, say)
    starts it on its first request, since the server runs with the ASGI lifespan off.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        start()
        return
    starters: dict[str, Callable[[], None]] | None = getattr(app.state, "phage_starters", None)
    if starters is None:
        starters = app.state.phage_starters = {}
        app.add_middleware(_StartFirst, starters=starters)
    starters[name] = start


class _StartFirst:
    """ASGI middleware: runs pending starters inside the loop, before the first request is served."""

    def __init__(self, app: ASGIApp, starters: dict[str, Callable[[], None]]) -> None:
        self.app = app
        self.starters = starters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.starters and scope["type"] in ("http", "websocket"):
            for name in list(self.starters):
                self.starters.pop(name)()
        await self.app(scope, receive, send)
