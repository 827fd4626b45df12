"""API keys and usage over HTTP: ``/api/keys`` (admin) and ``GET /api/usage``.

Admins create keys (the secret is shown once), revoke them and set credit
limits; anyone may read their own key's usage, admins everyone's.
"""

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request

from phage.api.requests import KeyTopUp
from phage.coordinator.bodies import parse_json, read_body, validated
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import ROLES, Principal
from phage.errors import InvalidInput, NotFound
from phage.store.sql_usage import RequestRecord, UsageRow

MAX_NAME = 100
MAX_LOG_ROWS = 1000
RATE_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")


def _rate(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10**12:
        raise InvalidInput(f"{name} must be an integer from 1 to 10^12, or null", field=name)
    return v


def request_public(r: RequestRecord) -> dict[str, Any]:
    """One row of the per-request usage log, as the API shows it."""
    return {
        "id": r.id,
        "key_id": r.key_id,
        "kind": r.kind,
        "model": r.model,
        "node_id": r.node_id,
        "started_at": r.started_at,
        "duration_s": round(r.duration_s, 4),
        "ttft_s": None if r.ttft_s is None else round(r.ttft_s, 4),
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.total_tokens,
        "reported_completion_tokens": r.reported_tokens,
        "outcome": r.outcome,
        "checked": r.checked or None,
    }


def _limit(body: dict[str, Any]) -> int | None:
    v = body.get("credit_limit_tokens")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10**15:
        raise InvalidInput(
            "credit_limit_tokens must be an integer from 0 to 10^15, or null", field="credit_limit_tokens"
        )
    return v


def summarise(rows: list[UsageRow]) -> dict[str, Any]:
    """Totals with breakdowns by model and by node."""
    out: dict[str, Any] = {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "by_model": {},
        "by_node": {},
    }
    for r in rows:
        for bucket in (
            out,
            out["by_model"].setdefault(r.model, {}),
            out["by_node"].setdefault(r.node_id, {}),
        ):
            bucket["requests"] = bucket.get("requests", 0) + r.requests
            bucket["prompt_tokens"] = bucket.get("prompt_tokens", 0) + r.prompt_tokens
            bucket["completion_tokens"] = bucket.get("completion_tokens", 0) + r.completion_tokens
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def install_keys(
    app: FastAPI,
    c: Coordinator,
    principal: Callable[[Request], Coroutine[Any, Any, Principal]],
) -> None:
    """Add the key and usage routes."""
    Caller = Annotated[Principal, Depends(principal)]

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await read_body(request, c.settings.max_request_bytes)
        data = parse_json(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object", field="body")
        return data

    @app.post("/api/keys", status_code=201, tags=["keys"])
    async def create_key(request: Request, who: Caller) -> dict[str, Any]:
        """Create an API key (admin); the secret is in this answer only."""
        who.require_admin()
        body = await body_of(request)
        unknown = sorted(set(body) - {"name", "role", "credit_limit_tokens"})
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0])
        name = body.get("name", "")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise InvalidInput(
                f"name must be a non-empty string of at most {MAX_NAME} characters", field="name"
            )
        role = body.get("role", "user")
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {list(ROLES)}", field="role")
        limit = _limit(body)
        key_id, secret = await c.keys.create(name.strip(), role, c.clock())
        if limit is not None:
            await c.keys.set_credit_limit(key_id, limit)
        return {"id": key_id, "name": name.strip(), "role": role, "credit_limit_tokens": limit, "key": secret}

    @app.get("/api/keys", tags=["keys"])
    async def list_keys(who: Caller) -> dict[str, Any]:
        """Every key (admin), without secrets."""
        who.require_admin()
        return {
            "keys": [
                {
                    "id": k.id,
                    "name": k.name,
                    "role": k.role,
                    "created_at": k.created_at,
                    "revoked": k.revoked,
                    "credit_limit_tokens": k.credit_limit_tokens,
                    "used_tokens": k.used_tokens,
                    "requests_per_minute": k.requests_per_minute,
                    "tokens_per_minute": k.tokens_per_minute,
                    "max_concurrent": k.max_concurrent,
                }
                for k in await c.keys.all()
            ]
        }

    @app.post("/api/keys/{key_id}", tags=["keys"])
    async def update_key(key_id: str, request: Request, who: Caller) -> dict[str, Any]:
        """Set or lift a key's credit limit, or set its rate limits (admin)."""
        who.require_admin()
        body = await body_of(request)
        if set(body) == {"credit_limit_tokens"}:
            await c.keys.set_credit_limit(key_id, _limit(body))
            return {"id": key_id, "credit_limit_tokens": body["credit_limit_tokens"]}
        if body and set(body) <= set(RATE_FIELDS):
            rates = {name: _rate(body, name) for name in RATE_FIELDS}
            await c.keys.set_rates(key_id, *rates.values())
            return {"id": key_id, **rates}
        raise InvalidInput(
            'send {"credit_limit_tokens": N or null}, or any of '
            + ", ".join(f'"{f}": N or null' for f in RATE_FIELDS),
            field="body",
        )

    @app.post("/api/keys/{key_id}/topup", tags=["keys"])
    async def top_up(key_id: str, request: Request, who: Caller) -> dict[str, Any]:
        """Add tokens to a key's credit balance (admin)."""
        who.require_admin()
        tokens = validated(KeyTopUp, await body_of(request)).tokens
        limit, used = await c.keys.top_up(key_id, tokens)
        return {"id": key_id, "credit_limit_tokens": limit, "credit_left_tokens": max(0, limit - used)}

    @app.get("/api/usage/requests", tags=["keys"])
    async def usage_requests(
        who: Caller,
        key_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LOG_ROWS)] = 100,
        before: float | None = None,
    ) -> dict[str, Any]:
        """The per-request usage log, newest first; non-admins see their own key's."""
        if key_id is not None and key_id != who.key_id:
            who.require_admin()
        if not who.is_admin:
            key_id = who.key_id
        rows = await c.keys.requests(key_id, limit, before)
        return {"requests": [request_public(r) for r in rows]}

    @app.get("/api/usage/requests/{request_id}", tags=["keys"])
    async def usage_request(request_id: str, who: Caller) -> dict[str, Any]:
        """One request's log row: what was charged and, for checked chat, the verdict."""
        row = await c.keys.request(request_id)
        if row is None or (row.key_id != who.key_id and not who.is_admin):
            raise NotFound(f"no request {request_id!r} in the usage log", field="request_id")
        return request_public(row)

    @app.get("/usage/recent", tags=["keys"])
    async def usage_recent(
        who: Caller, limit: Annotated[int, Query(ge=1, le=MAX_LOG_ROWS)] = 15
    ) -> list[dict[str, Any]]:
        """The Petals-coordinator-compatible recent usage log (``user_id``, tokens, ``worker_ids``)."""
        rows = await c.keys.requests(None if who.is_admin else who.key_id, limit)
        return [
            {
                "id": r.id,
                "user_id": r.key_id,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "worker_ids": [r.node_id] if r.node_id else [],
                "model": r.model,
                "timestamp": datetime.fromtimestamp(r.started_at, UTC).isoformat(),
            }
            for r in rows
        ]

    @app.get("/api/usage/nodes", tags=["keys"])
    async def node_earnings(who: Caller) -> dict[str, Any]:
        """Tokens each node served: its owner's account (admin)."""
        who.require_admin()
        return {
            "nodes": [
                {
                    "node_id": a.node_id,
                    "requests": a.requests,
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                    "credited_tokens": a.prompt_tokens + a.completion_tokens,
                }
                for a in await c.keys.node_accounts()
            ]
        }

    @app.delete("/api/keys/{key_id}", tags=["keys"])
    async def revoke_key(key_id: str, who: Caller) -> dict[str, Any]:
        """Revoke a key (admin): it is refused from the next request on."""
        who.require_admin()
        if key_id == who.key_id:
            raise InvalidInput("refusing to revoke the key making this request", field="key_id")
        await c.keys.revoke(key_id)
        return {"id": key_id, "revoked": True}

    @app.get("/api/usage", tags=["keys"])
    async def usage(who: Caller, key_id: str | None = None) -> dict[str, Any]:
        """Tokens used per key, with breakdowns per model and per node; non-admins see their own key."""
        if key_id is not None and key_id != who.key_id:
            who.require_admin()
        if not who.is_admin:
            key_id = who.key_id
        rows, keys = await c.keys.usage(key_id)
        if key_id is not None and key_id not in keys:
            raise NotFound(f"no API key {key_id!r}", field="key_id")
        by_key: dict[str, list[UsageRow]] = {k: [] for k in ([key_id] if key_id else keys)}
        for r in rows:
            by_key.setdefault(r.key_id, []).append(r)
        out = []
        for kid, krows in by_key.items():
            rec = keys.get(kid)
            summary = summarise(krows)
            limit = rec.credit_limit_tokens if rec else None
            out.append(
                {
                    "key_id": kid,
                    "name": rec.name if rec else "",
                    "credit_limit_tokens": limit,
                    "credit_left_tokens": None
                    if limit is None or rec is None
                    else max(0, limit - rec.used_tokens),
                    **summary,
                }
            )
        return {"keys": out}
