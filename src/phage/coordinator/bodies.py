"""Reading HTTP request bodies safely: a size limit before reading, JSON errors that say where.

Shared by every router, so it sits below them all (and below the app that installs them).
"""

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from phage.errors import InvalidInput, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}", field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, what: str = "body") -> Any:
    """JSON from bytes, with the position of the first error."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}", field=what) from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", field=what) from None


def validated(model: type[M], data: Any) -> M:
    """``data`` checked against a request model of :mod:`phage.api.requests`; the error names the field.

    The route and ``/openapi.json`` then hold one rule, so a generated client and the server agree.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
