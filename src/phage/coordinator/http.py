"""The HTTP application: error mapping, authentication, health, and the routers installed in order.

Routes live in router modules (``tasks_api``, ``nodes_api``, ``feed_api``, ``openai_api``,
``keys_api``, ``admission_api``, ``pool_api``, ``metrics``, ``dashboard``); each validates its
input, converts it and calls one service. Order matters where paths overlap: Starlette takes the
first route that matches, so specific node actions come before the generic node update.
"""

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from phage import __version__
from phage.coordinator.admission_api import install_admission_api
from phage.coordinator.bodies import parse_json, read_body
from phage.coordinator.core import Coordinator
from phage.coordinator.dashboard import install_dashboard
from phage.coordinator.feed_api import install_feed
from phage.coordinator.keys import Principal
from phage.coordinator.keys_api import install_keys
from phage.coordinator.metrics import install_metrics
from phage.coordinator.nodes_api import install_nodes
from phage.coordinator.openai_api import install_openai
from phage.coordinator.openapi_doc import install_openapi
from phage.coordinator.pool_api import install_pool_api
from phage.coordinator.sharded_api import install_sharded_api
from phage.coordinator.tasks_api import install_tasks
from phage.coordinator.training_api import install_training
from phage.coordinator.workloads_api import install_workloads_api
from phage.errors import PhageError, Unauthenticated

log = logging.getLogger("phage.http")


def create_app(coordinator: Coordinator) -> FastAPI:
    """The coordinator's HTTP application."""
    c = coordinator
    s = c.settings
    app = FastAPI(
        title="phage coordinator",
        version=__version__,
        description="Submit work to a pool of contributed machines; watch nodes and tasks live.",
    )

    @app.exception_handler(PhageError)
    async def _phage_error(_: Request, exc: PhageError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse(
            {
                "error": "InvalidInput",
                "message": f"{field or 'request'}: {first.get('msg', 'invalid')}",
                "field": field,
            },
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (no such route, method not allowed) in the documented error shape
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return JSONResponse(
            {"error": kind, "message": message}, status_code=exc.status_code, headers=exc.headers
        )

    async def principal(request: Request) -> Principal:
        return await c.keys.authenticate(request.headers.get("authorization"))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the coordinator is up and its store answers (503 while the database is away)."""
        return await c.overview.health()

    @app.get("/api/ca", response_class=PlainTextResponse, tags=["pool"])
    async def ca_certificate() -> str:
        """The coordinator CA certificate (public), for nodes and tools that pin it."""
        assert c.ca is not None
        return c.ca.cert_pem.decode()

    async def read_json(request: Request) -> Any:
        return parse_json(await read_body(request, s.max_request_bytes))

    install_tasks(app, c, principal)
    install_nodes(app, c, principal)
    install_feed(app, bus=c.bus, keys=c.keys, owner_of=c.ledger.owner_of)
    install_openai(app, c, read_json)
    install_keys(app, c, principal)
    install_training(app, c.training, principal, read_json)
    install_admission_api(app, c)
    install_pool_api(app, c)
    install_workloads_api(app, c, principal)
    install_metrics(app, c)
    install_dashboard(app, c)
    live_nodes = c.pool.nodes
    install_sharded_api(
        app,
        c.sharded,
        c.keys.authenticate,
        c.sharded_usage,
        lambda node_id: live_nodes[node_id].node.name if node_id in live_nodes else "",
    )
    install_openapi(app, s)
    return app
