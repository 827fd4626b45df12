"""The web dashboard: static files at ``/`` and ``/ui``, plus the two small APIs it needs.

The page itself is plain ES modules and CSS (``src/phage/web/``, no build step).
It reads the REST API with the API key the person signs in with, and follows
``WS /api/feed?key=…`` (browsers cannot set headers on a WebSocket).

Added endpoints:

- ``GET /api/me``: who the key belongs to (the page hides admin actions from users);
- ``GET /api/history?since=&limit=``: queue depth and throughput, sampled every
  :data:`SAMPLE_INTERVAL_S` seconds for the last hour, for the chart. Samples are
  kept in memory from the moment the HTTP app starts; a restart begins a new history.
"""
# No ``from __future__ import annotations`` here: FastAPI must resolve the routes'
# ``Annotated`` dependency aliases, which are local to install_dashboard.

import asyncio
import logging
import os
from collections import deque
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.observe import TaskObserver, observer_for, start_soon

log = logging.getLogger("phage.dashboard")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SAMPLE_INTERVAL_S = 1.0
HISTORY_SAMPLES = 3600
"""One hour at the sample interval."""
THROUGHPUT_WINDOW_S = 30.0
"""Throughput is tasks finished over this trailing window, scaled to a minute."""

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # The page holds an API key: allow only its own scripts, styles and connections.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _Revalidated(StaticFiles):
    """Static files the browser revalidates (by ETag) on every load: an upgraded page is never half stale."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


class History:
    """A ring of pool samples: queue depth, running work, online nodes, finished tasks and throughput."""

    def __init__(
        self, coordinator: Coordinator, observer: TaskObserver, *, size: int = HISTORY_SAMPLES
    ) -> None:
        self._c = coordinator
        self._observer = observer
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._task: asyncio.Task[None] | None = None

    def sample(self, now: float) -> dict[str, Any]:
        """Record the pool as it is now."""
        c = self._c
        done = sum(self._observer.outcomes.values())
        base = None  # the oldest sample inside the throughput window
        for s in reversed(self.samples):
            if now - s["ts"] > THROUGHPUT_WINDOW_S + 1e-6:
                break
            base = s
        per_min = 0.0
        if base is not None and now > base["ts"]:
            # a young history is divided by the full window, so the first finished task is no spike
            per_min = (done - base["done"]) * 60.0 / THROUGHPUT_WINDOW_S
        point = {
            "ts": round(now, 3),
            "queue": len(c.queue),
            "running": len(c.pool.attempts),
            "online": len(c.pool.online_nodes()),
            "done": done,
            **self._observer.outcomes,
            "per_min": round(per_min, 2),
        }
        self.samples.append(point)
        return point

    def since(self, ts: float, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` samples taken after ``ts``, oldest first."""
        out: list[dict[str, Any]] = []
        for s in reversed(self.samples):
            if s["ts"] <= ts or len(out) >= limit:
                break
            out.append(s)
        out.reverse()
        return out

    def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="phage-history")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.sample(self._c.clock())
            except Exception:  # a failed sample leaves a gap, not a dead chart
                log.exception("dashboard sample failed")
            # align to the interval so samples stay evenly spaced
            await asyncio.sleep(SAMPLE_INTERVAL_S - (loop.time() % SAMPLE_INTERVAL_S))


def install_dashboard(app: FastAPI, coordinator: Coordinator) -> None:
    """Serve the dashboard at ``/`` (static files under ``/ui``) and its helper APIs."""
    history = History(coordinator, observer_for(app, coordinator))
    start_soon(app, "dashboard-history", history.start)
    app.state.phage_history = history

    async def principal(request: Request) -> Principal:
        return await coordinator.keys.authenticate(request.headers.get("authorization"))

    Caller = Annotated[Principal, Depends(principal)]

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The dashboard page."""
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/api/me", tags=["dashboard"])
    async def me(who: Caller) -> dict[str, Any]:
        """Who this API key belongs to, and its role."""
        return {"id": who.key_id, "name": who.name, "role": who.role}

    @app.get("/api/history", tags=["dashboard"])
    async def pool_history(
        who: Caller,
        since: Annotated[float, Query(description="Only samples taken after this unix time")] = 0.0,
        limit: Annotated[int, Query(ge=1, le=HISTORY_SAMPLES, description="At most this many, newest")] = 900,
    ) -> dict[str, Any]:
        """Queue depth, running work and throughput, sampled every second for the last hour.

        Each sample: ``ts``, ``queue`` (tasks waiting), ``running`` (open assignments),
        ``online`` (nodes), cumulative ``verified``/``failed``/``cancelled``/``done`` since
        the coordinator started, and ``per_min`` (tasks finished per minute over the last
        ``window_s`` seconds).
        """
        return {
            "interval_s": SAMPLE_INTERVAL_S,
            "window_s": THROUGHPUT_WINDOW_S,
            "samples": history.since(since, limit),
        }

    app.mount("/ui", _Revalidated(directory=WEB_DIR), name="ui")
