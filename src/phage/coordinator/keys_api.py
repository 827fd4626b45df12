"""API keys and usage over HTTP: ``/api/keys`` (admin) and ``GET /api/usage``.

Admins create keys (the secret is shown once), revoke them and set credit
limits; anyone may read their own key's usage, admins everyone's.
"""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from phage.coordinator.bodies import parse_json, read_body
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import ROLES, Principal
from phage.errors import InvalidInput, NotFound
from phage.store.sql_usage import UsageRow

MAX_NAME = 100


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
                }
                for k in await c.keys.all()
            ]
        }

    @app.post("/api/keys/{key_id}", tags=["keys"])
    async def update_key(key_id: str, request: Request, who: Caller) -> dict[str, Any]:
        """Set or lift a key's credit limit (admin)."""
        who.require_admin()
        body = await body_of(request)
        if set(body) != {"credit_limit_tokens"}:
            raise InvalidInput('send {"credit_limit_tokens": N or null}', field="credit_limit_tokens")
        await c.keys.set_credit_limit(key_id, _limit(body))
        return {"id": key_id, "credit_limit_tokens": body["credit_limit_tokens"]}

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
                    "credit_left_tokens": None if limit is None else max(0, limit - summary["total_tokens"]),
                    **summary,
                }
            )
        return {"keys": out}
